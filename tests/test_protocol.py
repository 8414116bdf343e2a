"""SSE lines: the per-token writer is byte-identical to the pydantic chunk models it stands in for,
and upstream events that arrived together are merged per choice."""

import pytest

from server.protocol import (ChatCompletionChunk, ChunkChoice, ChunkWriter, CompletionChoice, CompletionChunk,
                             Delta)

TEXTS = ["", " 7", 'a "quoted" \\ back', "line\nbreak\ttab", "ünïcödé ✓ 数字", "\x00\x1f\x7f ctl", "</think>"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("kind", ["content", "reasoning", "both", "role", "finish"])
def test_chat_chunk_matches_model(text, kind):
    w = ChunkWriter("chat.completion.chunk", 'chatcmpl-"x"', 1764287000, "model ✓")
    args = {"content": dict(content=text), "reasoning": dict(reasoning=text), "both": dict(content=text, reasoning=text + "!"),
            "role": dict(role="assistant", content=text), "finish": dict(finish_reason="length")}[kind]
    r = args.get("reasoning")
    model = ChatCompletionChunk(id='chatcmpl-"x"', created=1764287000, model="model ✓", choices=[ChunkChoice(
        index=3, finish_reason=args.get("finish_reason"),
        delta=Delta(role=args.get("role"), content=args.get("content"), reasoning=r, reasoning_content=r))])
    assert w.chat(3, **args) == f"data: {model.model_dump_json(exclude_none=True)}\n\n"


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("reasoning,finish", [(None, None), ("why ✓", None), (None, "stop"), ("r\n", "length")])
def test_completion_chunk_matches_model(text, reasoning, finish):
    w = ChunkWriter("text_completion", "cmpl-1", 5, "bench")
    model = CompletionChunk(id="cmpl-1", created=5, model="bench", choices=[CompletionChoice(
        index=0, text=text, finish_reason=finish, reasoning=reasoning, reasoning_content=reasoning)])
    assert w.completion(0, text, reasoning, finish) == f"data: {model.model_dump_json(exclude_none=True)}\n\n"


def _line(index, text, ids, finish=None):
    import json
    return ("data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": [
        {"index": index, "text": text, "token_ids": ids, "finish_reason": finish}]})).encode()


def test_upstream_events_that_arrived_together_are_merged_per_choice():
    from server.upstream import _merge
    merged = {}
    for line in (_line(0, " a", [1]), b"", _line(1, "x", [7]), _line(0, "3", [2, 3]), b": keep-alive",
                 _line(0, ">", [4], "stop")):
        assert _merge(line, merged) is False
    assert [(o.index, o.text, o.token_ids, o.finish_reason) for o in merged.values()] == [
        (0, " a3>", [1, 2, 3, 4], "stop"), (1, "x", [7], None)]
    assert _merge(b"data: [DONE]", merged) is True


def test_upstream_error_event_is_an_upstream_error():
    from server.upstream import UpstreamError, _merge
    with pytest.raises(UpstreamError, match="boom"):
        _merge(b'data: {"error": {"message": "boom"}}', {})


def test_upstream_lines_are_grouped_by_arrival_and_split_across_reads():
    import asyncio

    from server.upstream import _arrived

    class Reads:  # what aiohttp's StreamReader.iter_any gives: whatever bytes have arrived
        async def iter_any(self):
            for piece in (b"data: 1\n\ndata: 2\n", b"\nda", b"ta: 3\n\n", b"data: [DONE]"):
                yield piece

    async def collect():
        return [lines async for lines in _arrived(Reads())]
    assert asyncio.run(collect()) == [[b"data: 1", b"", b"data: 2"], [b""], [b"data: 3", b""], [b"data: [DONE]"]]
