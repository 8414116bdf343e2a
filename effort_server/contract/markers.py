"""Think markers and the split of generated ids into reasoning and answer — one definition.

The same count feeds the server's usage and effort report, its metrics, the evaluator and the
RL rewards. Definitions (by token ids, never by re-tokenising text):

- reasoning tokens: the tokens strictly between the think start and end markers — the quantity
  vLLM's `thinking_token_budget` caps, so a budget of k yields at most k reasoning tokens;
- answer tokens: the tokens after the end marker, without a final end-of-sequence token;
- if the model never closes its thinking, everything after the start marker is reasoning.

Marker ids are looked up from the marker strings (the manifest's) with the model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Markers:
    start: tuple[int, ...]
    end: tuple[int, ...]
    eos: frozenset[int]
    start_text: str = "<think>"
    end_text: str = "</think>"

    @classmethod
    def from_tokenizer(cls, tokenizer, think_start: str, think_end: str) -> "Markers":
        start = tuple(tokenizer.encode(think_start, add_special_tokens=False))
        end = tuple(tokenizer.encode(think_end, add_special_tokens=False))
        if not start or not end:
            raise ValueError(f"think markers {think_start!r}/{think_end!r} do not tokenize")
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        return cls(start, end, frozenset(eos), think_start, think_end)


@dataclass(frozen=True)
class Split:
    reasoning_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    started: bool  # a start marker was generated (or the prompt left thinking open)
    closed: bool  # the end marker was generated

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning_ids)

    @property
    def answer_tokens(self) -> int:
        return len(self.answer_ids)


def _find(seq: list[int], sub: tuple[int, ...], start: int = 0) -> int:
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if tuple(seq[i : i + n]) == sub:
            return i
    return -1


def split_ids(ids: list[int], markers: Markers, in_think: bool = False) -> Split:
    """Split generated token ids. `in_think`: the prompt already opened the thinking."""
    ids = list(ids)
    if ids and ids[-1] in markers.eos:
        ids = ids[:-1]
    if in_think:
        body_from = 0
    else:
        s = _find(ids, markers.start)
        if s < 0:
            return Split((), tuple(ids), started=False, closed=False)
        body_from = s + len(markers.start)
    e = _find(ids, markers.end, body_from)
    if e < 0:
        return Split(tuple(ids[body_from:]), (), started=True, closed=False)
    return Split(tuple(ids[body_from:e]), tuple(ids[e + len(markers.end) :]), started=True, closed=True)
