"""SSE lines: the per-token writer is byte-identical to the pydantic chunk models it stands in for,
and upstream events that arrived together are merged per choice."""

import pytest
from effort_server.server.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    ChunkWriter,
    CompletionChoice,
    CompletionChunk,
    Delta,
)

TEXTS = ["", " 7", 'a "quoted" \\ back', "line\nbreak\ttab", "ünïcödé ✓ 数字", "\x00\x1f\x7f ctl", "</think>"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("kind", ["content", "reasoning", "both", "role", "finish"])
def test_chat_chunk_matches_model(text, kind):
    w = ChunkWriter("chat.completion.chunk", 'chatcmpl-"x"', 1764287000, "model ✓")
    args = {
        "content": dict(content=text),
        "reasoning": dict(reasoning=text),
        "both": dict(content=text, reasoning=text + "!"),
        "role": dict(role="assistant", content=text),
        "finish": dict(finish_reason="length"),
    }[kind]
    r = args.get("reasoning")
    model = ChatCompletionChunk(
        id='chatcmpl-"x"',
        created=1764287000,
        model="model ✓",
        choices=[
            ChunkChoice(
                index=3,
                finish_reason=args.get("finish_reason"),
                delta=Delta(role=args.get("role"), content=args.get("content"), reasoning=r, reasoning_content=r),
            )
        ],
    )
    assert w.chat(3, **args) == f"data: {model.model_dump_json(exclude_none=True)}\n\n"


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("reasoning,finish", [(None, None), ("why ✓", None), (None, "stop"), ("r\n", "length")])
def test_completion_chunk_matches_model(text, reasoning, finish):
    w = ChunkWriter("text_completion", "cmpl-1", 5, "bench")
    model = CompletionChunk(
        id="cmpl-1",
        created=5,
        model="bench",
        choices=[
            CompletionChoice(
                index=0, text=text, finish_reason=finish, reasoning=reasoning, reasoning_content=reasoning
            )
        ],
    )
    assert w.completion(0, text, reasoning, finish) == f"data: {model.model_dump_json(exclude_none=True)}\n\n"


def _line(index, text, ids, finish=None):
    import json

    return (
        "data: "
        + json.dumps(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "choices": [{"index": index, "text": text, "token_ids": ids, "finish_reason": finish}],
            }
        )
    ).encode()


def test_upstream_events_that_arrived_together_are_merged_per_choice():
    from effort_server.server.upstream import _merge

    merged = {}
    for line in (
        _line(0, " a", [1]),
        b"",
        _line(1, "x", [7]),
        _line(0, "3", [2, 3]),
        b": keep-alive",
        _line(0, ">", [4], "stop"),
    ):
        assert _merge(line, merged) is False
    assert [(o.index, o.text, o.token_ids, o.finish_reason) for o in merged.values()] == [
        (0, " a3>", [1, 2, 3, 4], "stop"),
        (1, "x", [7], None),
    ]
    assert _merge(b"data: [DONE]", merged) is True


def test_upstream_error_event_is_an_upstream_error():
    from effort_server.server.upstream import UpstreamError, _merge

    with pytest.raises(UpstreamError, match="boom"):
        _merge(b'data: {"error": {"message": "boom"}}', {})


def test_upstream_lines_are_grouped_by_arrival_and_split_across_reads():
    import asyncio

    from effort_server.server.upstream import _arrived

    class Reads:  # what aiohttp's StreamReader.iter_any gives: whatever bytes have arrived
        async def iter_any(self):
            for piece in (b"data: 1\n\ndata: 2\n", b"\nda", b"ta: 3\n\n", b"data: [DONE]"):
                yield piece

    async def collect():
        return [lines async for lines in _arrived(Reads())]

    assert asyncio.run(collect()) == [[b"data: 1", b"", b"data: 2"], [b""], [b"data: 3", b""], [b"data: [DONE]"]]


def same_json(line: str, model) -> bool:
    """Same data and field order (floats are written by different encoders: -1.2e-05 vs -0.000012)."""
    import json

    assert line.startswith("data: ") and line.endswith("\n\n")
    ours, theirs = json.loads(line[6:]), json.loads(model.model_dump_json(exclude_none=True))
    return ours == theirs and json.dumps(ours) == json.dumps(theirs)


def test_chunks_with_logprobs_match_models():
    from effort_server.server.logprobs import Entry, chat_logprobs, completion_logprobs
    from effort_server.server.protocol import ChatLogprobs, CompletionLogprobs

    reasoning = [Entry(5, "a3", -1.2993727978027891e-05, (("a3", -1.2993727978027891e-05), (" ✓", -9999.0)))]
    answer = [Entry(6, '\\boxed{"1"}', -0.25, (('\\boxed{"1"}', -0.25),)), Entry(7, "\n", -3.0, (("\n", -3.0),))]
    lp = chat_logprobs(reasoning, answer)
    w = ChunkWriter("chat.completion.chunk", "c", 1, "m")
    model = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[ChunkChoice(index=0, delta=Delta(content="x"), logprobs=ChatLogprobs(**lp))],
    )
    assert same_json(w.chat(0, content="x", logprobs=lp), model)
    clp = completion_logprobs(answer, 4, 1)
    assert clp["text_offset"] == [4, 4 + len(answer[0].token)]
    w = ChunkWriter("text_completion", "c", 1, "m")
    model = CompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[
            CompletionChoice(
                index=0,
                text="y",
                finish_reason="stop",
                logprobs=CompletionLogprobs(**clp),
                reasoning="r",
                reasoning_content="r",
            )
        ],
    )
    assert same_json(w.completion(0, "y", "r", "stop", clp), model)


def test_upstream_logprobs_are_read_and_merged():
    import json

    from effort_server.server.upstream import _merge

    def line(ids, tokens, lps):
        lp = {
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": [{"z": -5.0, t: v} for t, v in zip(tokens, lps)],
            "text_offset": [0] * len(tokens),
        }
        return (
            "data: "
            + json.dumps(
                {
                    "choices": [
                        {"index": 0, "text": "".join(tokens), "token_ids": ids, "logprobs": lp, "finish_reason": None}
                    ]
                }
            )
        ).encode()

    merged = {}
    _merge(line([1], ["a"], [-0.1]), merged, 1)
    _merge(line([2, 3], ["b", "c"], [-0.2, None]), merged, 1)
    assert [(e.token_id, e.token, e.logprob, e.top) for e in merged[0].entries] == [
        (1, "a", -0.1, (("a", -0.1),)),
        (2, "b", -0.2, (("b", -0.2),)),
        (3, "c", -9999.0, (("z", -5.0),)),
    ]
