"""The per-token SSE writer is byte-identical to the pydantic chunk models it stands in for."""

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
