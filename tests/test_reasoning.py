"""Reasoning split and count: by token ids (counts) and by streamed text (pieces)."""

import random

import pytest
from effort_server.server.reasoning import StreamSplitter

from effort_server.contract.markers import Markers, split_ids

M = Markers(start=(1,), end=(2,), eos=frozenset({9}))
M2 = Markers(start=(1, 3), end=(2, 4), eos=frozenset({9}))  # multi-token markers


@pytest.mark.parametrize(
    "ids,markers,in_think,expected",
    [
        ([1, 5, 6, 2, 7, 9], M, False, ((5, 6), (7,), True, True)),
        ([1, 2, 7, 9], M, False, ((), (7,), True, True)),  # forced end at once: 0 reasoning
        ([1, 5, 6, 7], M, False, ((5, 6, 7), (), True, False)),  # never closed: all reasoning
        ([7, 8, 9], M, False, ((), (7, 8), False, False)),  # never thought
        ([5, 2, 7], M, True, ((5,), (7,), True, True)),  # prompt opened the thinking
        ([1, 3, 5, 2, 4, 7, 9], M2, False, ((5,), (7,), True, True)),
        ([1, 3, 5, 2, 7, 9], M2, False, ((5, 2, 7), (), True, False)),  # half an end marker is not an end
    ],
    ids=["normal", "budget-0", "unclosed", "no-think", "in-think", "multi-token", "partial-marker"],
)
def test_split_ids(ids, markers, in_think, expected):
    s = split_ids(ids, markers, in_think)
    assert (s.reasoning_ids, s.answer_ids, s.started, s.closed) == expected
    assert s.reasoning_tokens == len(expected[0])


TEXT = "<think>a3 b7>0 check</think>\\boxed{1}"


def _stream(parts, in_think=False):
    sp = StreamSplitter("<think>", "</think>", in_think)
    r = a = ""
    for p in parts:
        x, y = sp.feed(p)
        r, a = r + x, a + y
    x, y = sp.flush()
    return r + x, a + y


def test_stream_splitter_any_chunking():
    rng = random.Random(0)
    for _ in range(500):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(1, 12)))
        parts = [TEXT[i:j] for i, j in zip([0] + cuts, cuts + [len(TEXT)])]
        assert _stream(parts) == ("a3 b7>0 check", "\\boxed{1}"), parts


@pytest.mark.parametrize(
    "parts,in_think,expected",
    [
        (["<thi", "nk>x</th", "ink>y"], False, ("x", "y")),
        (["x</think>y"], True, ("x", "y")),
        (["<think>abc"], False, ("abc", "")),  # unclosed: held-back text flushed as reasoning
        (["no thinking <"], False, ("", "no thinking <")),
        (["<think></think>"], False, ("", "")),
    ],
)
def test_stream_splitter_cases(parts, in_think, expected):
    assert _stream(parts, in_think) == expected


def _token_split(ids, markers, in_think, rng):
    from effort_server.server.logprobs import Entry, TokenSplitter

    sp = TokenSplitter(markers, in_think)
    entries = [Entry(t, str(t), -0.5, ()) for t in ids]
    r, a = [], []
    i = 0
    while i < len(entries):
        j = i + rng.randint(1, 3)
        x, y = sp.feed(entries[i:j])
        r, a, i = r + x, a + y, j
    x, y = sp.flush()
    return tuple(e.token_id for e in r + x), tuple(e.token_id for e in a + y)


@pytest.mark.parametrize("markers", [M, M2], ids=["one-token", "multi-token"])
def test_token_splitter_agrees_with_split_ids(markers):
    """Logprobs are split token by token as they stream; the split must be the one the counts use."""
    rng = random.Random(1)
    for _ in range(500):
        body = [rng.choice([1, 2, 3, 4, 5, 6]) for _ in range(rng.randint(0, 10))]
        ids = list(markers.start) + body + list(markers.end) + [rng.choice([3, 4, 7])] * rng.randint(0, 3) + [9]
        in_think = rng.random() < 0.2
        if in_think:
            ids = ids[len(markers.start) :]
        s = split_ids(ids, markers, in_think)
        assert _token_split(ids, markers, in_think, rng) == (s.reasoning_ids, s.answer_ids), ids


@pytest.mark.parametrize("stops", [["}"], ["ed{", "x"], ["{1}", "oxe"], ["zz"], ["\\boxed{1}"]])
def test_stop_watcher_any_chunking(stops):
    """Stop strings on the streamed answer: the same cut as on the whole text, however it arrives."""
    from effort_server.server.reasoning import StopWatcher

    text = "\\boxed{1} and {1} more"
    at = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = (text[: min(at)], True) if at else (text, False)
    end = min((i, i + len(s)) for i, s in ((text.find(s), s) for s in stops) if i >= 0)[1] if at else None
    rng = random.Random(2)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 8)))
        parts = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        w, out, hit = StopWatcher(stops), "", False
        for n, part in enumerate(parts):
            piece, hit = w.feed(part, final=n == len(parts) - 1)
            out += piece
            if hit:
                # what the engine sent past the stop string's end (its tokens are not counted)
                assert w.past == len("".join(parts[: n + 1])) - end, parts
                break
        assert (out, hit) == expected, parts


def test_tokens_past_a_stop_string(tokenizer):
    """The tokens a piece carried after a stop string's end: only those whose text lies wholly past it."""
    from effort_server.server.reasoning import tokens_past

    tok = tokenizer
    ids = tok.encode("\\boxed{16}", add_special_tokens=False) + [tok.eos_token_id]
    tail = tok.encode("16}", add_special_tokens=False)
    assert tokens_past(tok, ids, 3) == len(tail) + 1  # "16}" and the end of sequence
    assert tokens_past(tok, ids, 0) == 1  # the end of sequence has no text
    assert tokens_past(tok, ids, 100) == len(ids)
    assert tokens_past(tok, [], 5) == 0
