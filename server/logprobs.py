"""Token logprobs: read from the engine (vLLM's per-position dicts) or from an upstream's
completions response, split into reasoning and answer tokens by token ids the way the texts
are split (the think markers belong to neither), and written in OpenAI's two shapes.

Chat: ``choices[i].logprobs = {"content": [{token, logprob, bytes, top_logprobs}], "reasoning":
[...]}`` — `content` holds the answer's tokens as OpenAI's does; `reasoning` (our extension) the
reasoning's. Completions: the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``
over the tokens of `text` (the answer). A logprob of −∞ is written as −9999.0, as vLLM does.
"""

from __future__ import annotations

from typing import NamedTuple

from ..contract.markers import Markers

FLOOR = -9999.0


class Entry(NamedTuple):
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # the k most likely tokens at this position, best first


def _lp(x: float | None) -> float:
    return FLOOR if x is None or x != x or x < FLOOR else float(x)


def from_engine(token_ids, positions, k: int) -> list[Entry]:
    """Entries for generated `token_ids` from vLLM's logprobs (one dict id → Logprob a position)."""
    out = []
    for tid, pos in zip(token_ids, positions or ()):
        chosen = pos.get(tid)
        ranked = sorted(pos.values(), key=lambda p: p.rank if p.rank is not None else 1 << 30)[:k]
        out.append(
            Entry(
                tid,
                (chosen.decoded_token if chosen else None) or "",
                _lp(chosen.logprob if chosen else None),
                tuple((p.decoded_token or "", _lp(p.logprob)) for p in ranked),
            )
        )
    return out


def from_completion(token_ids: list[int], body: dict | None, k: int) -> list[Entry]:
    """Entries from an OpenAI completions ``logprobs`` object (an upstream's, with its token ids)."""
    if not body:
        return []
    tokens, lps = body.get("tokens") or [], body.get("token_logprobs") or []
    tops = body.get("top_logprobs") or [None] * len(tokens)
    out = []
    for tid, tok, lp, top in zip(token_ids, tokens, lps, tops):
        ranked = sorted(((t, _lp(v)) for t, v in (top or {}).items()), key=lambda kv: -kv[1])[:k]
        out.append(Entry(tid, tok, _lp(lp), tuple(ranked)))
    return out


class TokenSplitter:
    """Route token entries into (reasoning, answer) as they arrive, like `StreamSplitter` does
    with text: tokens that may begin a (multi-token) marker wait until the next tokens tell;
    marker tokens and the end-of-sequence token are dropped."""

    def __init__(self, markers: Markers, in_think: bool = False):
        self.markers = markers
        self.state = "think" if in_think else "before"
        self.pending: list[Entry] = []

    def feed(self, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        reasoning: list[Entry] = []
        answer: list[Entry] = []
        for e in entries:
            if e.token_id in self.markers.eos:
                continue
            if self.state == "after":
                answer.append(e)
                continue
            marker = self.markers.start if self.state == "before" else self.markers.end
            self.pending.append(e)
            while self.pending:
                ids = tuple(p.token_id for p in self.pending)
                if ids == marker:
                    self.pending = []
                    self.state = "think" if self.state == "before" else "after"
                    break
                if marker[: len(ids)] == ids:
                    break
                (reasoning if self.state == "think" else answer).append(self.pending.pop(0))
        return reasoning, answer

    def flush(self) -> tuple[list[Entry], list[Entry]]:
        rest, self.pending = self.pending, []
        return (rest, []) if self.state == "think" else ([], rest)


def _item(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_items(entries: list[Entry]) -> list[dict]:
    return [{**_item(e.token, e.logprob), "top_logprobs": [_item(t, lp) for t, lp in e.top]} for e in entries]


def chat_logprobs(reasoning: list[Entry], answer: list[Entry]) -> dict:
    return {"content": chat_items(answer), "reasoning": chat_items(reasoning)}


def completion_logprobs(entries: list[Entry], offset: int, k: int) -> dict:
    """The legacy shape; `offset`: where the first token's text starts in the choice's text."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) if k else None for e in entries],
        "text_offset": offsets,
    }
