"""The server's side of reasoning text: streamed splitting, stop strings, token offsets.

`StreamSplitter` splits streamed text at the think markers (the non-streamed split is by ids,
`effort_server.contract.markers.split_ids`); `StopWatcher` applies stop strings to the answer
only; `tokens_past` counts the tokens a stop string cut off.
"""

from __future__ import annotations


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
                head, self.buf = self.buf[:i], self.buf[i + len(marker) :]
                (reasoning if self.state == "think" else answer).append(head)
                self.state = "think" if self.state == "before" else "after"
                continue
            keep = _partial_suffix(self.buf, marker)
            emit, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
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
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False


def tokens_past(tokenizer, ids, chars: int) -> int:
    """How many of the last `ids` make up no more than the last `chars` characters of their text:
    the tokens an engine piece carried past a stop string's end (a piece holds several tokens when
    the engine runs ahead of the stream). They are left out of the count, as vLLM leaves them out."""
    n = 0
    while n < len(ids) and len(tokenizer.decode(list(ids[len(ids) - n - 1 :]), skip_special_tokens=True)) <= chars:
        n += 1
    return n


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
