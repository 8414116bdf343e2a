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


def _rfind(seq: list[int], sub: tuple[int, ...]) -> int:
    n = len(sub)
    for i in range(len(seq) - n, -1, -1):
        if tuple(seq[i : i + n]) == sub:
            return i
    return -1


def open_thinking(prompt_ids: list[int], markers: Markers) -> int | None:
    """Tokens of thinking the prompt itself left open (R1 distills' prompt ends `<think>\\n`: 1),
    counted the way vLLM's thinking-budget state counts them; None when the prompt leaves no
    thinking open (its last start marker, if any, is closed)."""
    s, e = _rfind(prompt_ids, markers.start), _rfind(prompt_ids, markers.end)
    if s < 0 or s <= e:
        return None
    return len(prompt_ids) - (s + len(markers.start))


# vLLM's --reasoning-parser names whose think markers are text tags (gpt-oss' harmony channels are not)
PARSER_MARKERS = {
    "deepseek_r1": ("<think>", "</think>"),
    "deepseek_v3": ("<think>", "</think>"),
    "qwen3": ("<think>", "</think>"),
    "glm45": ("<think>", "</think>"),
    "hunyuan_a13b": ("<think>", "</think>"),
    "ernie45": ("<think>", "</think>"),
    "minimax_m2": ("<think>", "</think>"),
    "olmo3": ("<think>", "</think>"),
    "seed_oss": ("<seed:think>", "</seed:think>"),
    "mistral": ("[THINK]", "[/THINK]"),
    "granite": ("Here is my thought process:", "Here is my response:"),
}
# pairs looked for among a tokenizer's single tokens, in this order
KNOWN_PAIRS = [
    ("<think>", "</think>"),
    ("<seed:think>", "</seed:think>"),
    ("[THINK]", "[/THINK]"),
    ("<thinking>", "</thinking>"),
]


class MarkersNotFound(ValueError):
    pass


def detect_markers(tokenizer, start: str = "", end: str = "", reasoning_parser: str = "") -> tuple[str, str]:
    """The think markers of a model without our manifest: `start`/`end` when given (both), else the
    pair of vLLM's `reasoning_parser` name, else the first known pair that is two single tokens of
    the tokenizer. None found: `MarkersNotFound` with a one-line message naming the flags."""
    if start or end:
        if not (start and end):
            raise MarkersNotFound("give both --think-start and --think-end")
        return start, end
    if reasoning_parser:
        if reasoning_parser not in PARSER_MARKERS:
            names = ", ".join(sorted(PARSER_MARKERS))
            raise MarkersNotFound(
                f"--reasoning-parser {reasoning_parser!r} has no text think markers (known: {names})"
            )
        return PARSER_MARKERS[reasoning_parser]
    for s, e in KNOWN_PAIRS:
        if all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in (s, e)):
            return s, e
    raise MarkersNotFound(
        "no think markers found in the model's tokenizer (looked for "
        + ", ".join(f"{s}…{e}" for s, e in KNOWN_PAIRS)
        + " as single tokens); give --think-start TEXT --think-end TEXT or --reasoning-parser NAME"
    )
