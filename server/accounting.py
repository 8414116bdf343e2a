"""Accounting: a finished request's token ids → usage, the effort report, metrics and history.

Reasoning and answer tokens are counted from the ids with the one split (contract/markers), so
usage, `effort`, the Prometheus counters and the router's history always agree. A natural
full-effort length (closed, not cut by a budget) goes into the history for the next time the
same prompt comes to the same model (the router's online correction).
"""

from __future__ import annotations

import time

from ..contract.markers import Markers, Split, split_ids
from ..contract.scoring import BASE
from .generation import Choice
from .metrics import Metrics
from .protocol import CompletionTokensDetails, EffortReport, Usage
from .routes import History
from .sampling import Prepared


class Accounting:
    def __init__(self, markers: Markers, metrics: Metrics, history: History | None):
        self.markers, self.metrics, self.history = markers, metrics, history

    def account(self, api: str, p: Prepared, choices: dict[int, Choice], ttft: float | None):
        """(usage, effort report) of the request; metrics observed under `api`."""
        splits = [split_ids(c.ids, self.markers, p.in_think) for c in choices.values()]
        d = p.decision
        budget = d.thinking_budget
        hits = [budget is not None and s.reasoning_tokens >= budget and (s.closed or s.started) for s in splits]
        completion = sum(len(c.ids) for c in choices.values())
        reasoning = [s.reasoning_tokens for s in splits]
        usage = Usage(
            prompt_tokens=len(p.prompt_ids),
            completion_tokens=completion,
            total_tokens=len(p.prompt_ids) + completion,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=sum(reasoning)),
        )
        fraction = None
        if d.full_effort_tokens:
            fraction = round(sum(reasoning) / len(reasoning) / d.full_effort_tokens, 4)
        report = EffortReport(
            requested=d.requested,
            applied=d.effort,
            adapter=d.adapter,
            thinking_budget=budget,
            budget_hit=any(hits),
            route=d.route,
            predicted=d.predicted,
            reason=d.reason,
            choice=d.choice,
            spend=d.spend,
            full_effort_tokens=None if d.full_effort_tokens is None else round(d.full_effort_tokens, 1),
            realised_fraction=fraction,
        )
        self.metrics.observe(
            api,
            d,
            d.adapter or "base",
            [c.finish_reason for c in choices.values()],
            len(p.prompt_ids),
            reasoning,
            [s.answer_tokens for s in splits],
            hits,
            time.perf_counter() - p.t0,
            ttft,
            completion,
        )
        self.remember(p, splits, hits)
        return usage, report

    def remember(self, p: Prepared, splits: list[Split], hits: list[bool]) -> None:
        d = p.decision
        if self.history is None or d.predicted is None or "@" in d.choice:  # only a model at its full length
            return
        natural = [s.reasoning_tokens for s, h in zip(splits, hits) if s.closed and not h]
        if natural:
            self.history.record(d.adapter or BASE, p.text, sum(natural) / len(natural))
