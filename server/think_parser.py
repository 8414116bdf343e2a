"""A vLLM reasoning parser for the served model's think markers, so that vLLM's structured
outputs (`response_format`, `structured_outputs`) constrain the answer and leave the thinking free.

vLLM imports this module as a reasoning-parser plugin inside its engine process (`engine_kwargs`
names it and loads it first), which works whether that process is forked or spawned; the markers come from the
environment (`EFFORT_THINK_MARKERS`, set by `engine_kwargs` from the model manifest) because a
spawned process does not share our memory. The markers must be single tokens of the vocabulary
(the service checks before it accepts a structured request).
"""

from __future__ import annotations

import json
import os

from vllm.reasoning import ReasoningParserManager
from vllm.reasoning.basic_parsers import BaseThinkingReasoningParser

NAME = "effort-markers"
ENV = "EFFORT_THINK_MARKERS"


@ReasoningParserManager.register_module(NAME)
class ThinkMarkersParser(BaseThinkingReasoningParser):
    @property
    def start_token(self) -> str:
        return json.loads(os.environ.get(ENV, '["<think>", "</think>"]'))[0]

    @property
    def end_token(self) -> str:
        return json.loads(os.environ.get(ENV, '["<think>", "</think>"]'))[1]
