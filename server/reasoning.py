"""Split a completion into reasoning and answer, and count reasoning tokens — in one place.

The same count feeds `usage.completion_tokens_details.reasoning_tokens`, the response's effort
report, the metrics and the evaluator. Definitions (by token ids, never by re-tokenising text):

- reasoning tokens: the tokens strictly between the think start and end markers — the quantity
  vLLM's `thinking_token_budget` caps, so a budget of k yields at most k reasoning tokens;
- answer tokens: the tokens after the end marker, without a final end-of-sequence token;
- if the model never closes its thinking, everything after the start marker is reasoning.

Marker ids are looked up from the marker strings with the model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Markers:
    start: tuple[int, ...]
    end: tuple[int, ...]
    eos: frozenset[int]

    @classmethod
    def from_tokenizer(cls, tokenizer, think_start: str, think_end: str) -> "Markers":
        start = tuple(tokenizer.encode(think_start, add_special_tokens=False))
        end = tuple(tokenizer.encode(think_end, add_special_tokens=False))
        if not start or not end:
            raise ValueError(f"think markers {think_start!r}/{think_end!r} do not tokenize")
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        return cls(start, end, frozenset(eos))


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
        if tuple(seq[i:i + n]) == sub:
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
    return Split(tuple(ids[body_from:e]), tuple(ids[e + len(markers.end):]), started=True, closed=True)


class StreamSplitter:
    """Route streamed text into (reasoning, answer) pieces as it arrives.

    Markers may straddle two deltas, so up to len(marker) - 1 trailing characters are held
    back until the next delta (or `flush`) shows whether they start a marker. The text form of
    the split; the token counts still come from `split_ids` on the final token ids.
    """

    def __init__(self, think_start: str, think_end: str, in_think: bool = False):
        self.start, self.end = think_start, think_end
        self.state = "think" if in_think else "before"
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning, answer = [], []
        while True:
            marker = self.start if self.state == "before" else self.end if self.state == "think" else None
            if marker is None:
                answer.append(self.buf)
                self.buf = ""
                break
            i = self.buf.find(marker)
            if i >= 0:
                head, self.buf = self.buf[:i], self.buf[i + len(marker):]
                (reasoning if self.state == "think" else answer).append(head)
                self.state = "think" if self.state == "before" else "after"
                continue
            keep = _partial_suffix(self.buf, marker)
            emit, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
            (reasoning if self.state == "think" else answer).append(emit)
            break
        return "".join(reasoning), "".join(answer)

    def flush(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return (rest, "") if self.state == "think" else ("", rest)


class StopWatcher:
    """The request's `stop` strings, applied to the answer text as it streams (never to the
    reasoning, so a stop string the thinking happens to contain cannot cost the answer). Text
    that may begin a stop string is held back until the next piece shows; `feed` returns the
    text to emit and whether a stop string was found (the text before it is emitted, the stop
    string and everything after it are not)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.past = 0  # after a hit: characters of the fed text after the end of the stop string

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        text, self.held = self.held + text, ""
        at = [(i, i + len(s)) for i, s in ((text.find(s), s) for s in self.stops) if i >= 0]
        if at:
            start, end = min(at)
            self.past = len(text) - end
            return text[:start], True
        keep = 0 if final else max((_partial_suffix(text, s) for s in self.stops), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False


def tokens_past(tokenizer, ids, chars: int) -> int:
    """How many of the last `ids` make up no more than the last `chars` characters of their text:
    the tokens an engine piece carried past a stop string's end (a piece holds several tokens when
    the engine runs ahead of the stream). They are left out of the count, as vLLM leaves them out."""
    n = 0
    while n < len(ids) and len(tokenizer.decode(list(ids[len(ids) - n - 1:]), skip_special_tokens=True)) <= chars:
        n += 1
    return n


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0

