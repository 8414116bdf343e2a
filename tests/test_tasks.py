import json
import random

import pytest
from effort_server.training.tasks import DigitsTask, JsonlMathTask, Problem, TaskError, extract_boxed, load_task
from effort_server.training.tasks.digits import (
    TERSE_MAX,
    answer_for,
    chain,
    last_sum,
    parse_question,
    parse_styles,
    question_for,
)


@pytest.mark.parametrize(
    "style,expected",
    [
        ("plain", "a3 b7>0 c2>2 d9>1"),
        ("verbose", "a3 b7>0 c2>2 d9>1 check a3 b7>0 ok c2>2 ok d9>1 ok"),
        ("terse", "a3 b70 c22 d91"),
        ("compact", "a3 b7c2>2 d9>1"),
        ("none", ""),
    ],
    ids=lambda x: x if isinstance(x, str) and " " not in x else None,
)
def test_chain_styles(style, expected):
    assert chain([3, 7, 2, 9], style) == expected


@pytest.mark.parametrize(
    "thinking,expected",
    [
        ("a3 b7>0 c2>2 d9", "2"),
        ("a3 b70 c22 d9", "2"),
        ("a3 b70 c22 d91", "1"),
        ("a3", "3"),
        ("", None),
        ("a3 b7>0 c2>2 d9>1 check a3 b7>0 ok answer1", "0"),  # the last sum written, not the conclusion
    ],
)
def test_last_sum_reads_plain_and_terse_chains(thinking, expected):
    assert last_sum(thinking) == expected


@pytest.mark.parametrize(
    "stop,expected",
    [
        (1, "a3 b7>0 c2>2 d9>1 check a3 answer1"),
        (3, "a3 b7>0 c2>2 d9>1 check a3 b7>0 ok c2>2 ok answer1"),
        (7, "a3 b7>0 c2>2 d9>1 check a3 b7>0 ok c2>2 ok d9>1 ok check a3 b7>0 ok c2>2 ok answer1"),
    ],
)
def test_partial_recheck_stops_anywhere_and_concludes_with_the_chain_sum(stop, expected):
    assert chain([3, 7, 2, 9], "partial", stop=stop, passes=2) == expected
    for bad in (0, 8):
        with pytest.raises(ValueError):
            chain([3, 7, 2, 9], "partial", stop=bad, passes=2)


def test_recheck_passes():
    two = chain([3, 7, 2, 9], "verbose", passes=2)
    assert two == "a3 b7>0 c2>2 d9>1" + " check a3 b7>0 ok c2>2 ok d9>1 ok" * 2
    task = DigitsTask(recheck_passes=2, styles={"verbose": 1.0})
    q, thinking, _ = task.sft_example(random.Random(0))
    assert thinking.count(" check") == 2 and thinking == chain(parse_question(q), "verbose", passes=2)
    with pytest.raises(ValueError):
        DigitsTask(recheck_passes=0)


@pytest.mark.parametrize(
    "spec,want",
    [
        ("verbose=0.5,partial=0.2", {"verbose": 0.5, "partial": 0.2}),
        (" plain=1 ", {"plain": 1.0}),
        ("verbose", None),
        ("verbose=lots", None),
        ("turbo=1", None),
        ("verbose=-1,plain=2", None),
        ("plain=0", None),
        ("", None),
    ],
)
def test_parse_styles(spec, want):
    if want is None:
        with pytest.raises(ValueError):
            parse_styles(spec)
    else:
        assert parse_styles(spec) == want


def test_sft_cut_answers_the_last_sum_written_and_partial_the_true_sum():
    task, rng = DigitsTask(), random.Random(0)
    seen = set()
    for _ in range(400):
        q, thinking, ans = task.sft_example(
            rng, style=rng.choice(["cut", "partial"])
        )  # partial: not in the default mix
        digits = parse_question(q)
        if " answer" in thinking:
            seen.add("partial")
            assert ans == f"\\boxed{{{answer_for(digits)}}}" and thinking.endswith(f"answer{answer_for(digits)}")
        else:
            seen.add("cut")
            assert ans == f"\\boxed{{{last_sum(thinking)}}}"
    assert seen == {"cut", "partial"}


def test_question_answer_round_trip():
    assert question_for([3, 7, 2, 9]) == "a3 b7 c2 d9"
    assert parse_question("a3 b7 c2 d9") == [3, 7, 2, 9]
    assert answer_for([3, 7, 2, 9]) == "1"
    with pytest.raises(ValueError):
        parse_question("a3 c7")  # letters must follow in order


@pytest.mark.parametrize(
    "completion,correct",
    [
        ("\\boxed{1}", True),
        ("The answer is \\boxed{ 1 }.", True),
        ("\\boxed{3} no wait \\boxed{1}", True),  # the last box counts
        ("\\boxed{2}", False),
        ("1", False),  # no box
        ("\\boxed{}", False),
        ("\\boxed{11}", False),
        ("\\boxed{1", False),  # unclosed
        ("\\boxed{x}", False),
        ("", False),
    ],
    ids=["right", "spaces", "last-box", "wrong", "no-box", "empty-box", "two-digits", "unclosed", "letter", "empty"],
)
def test_digits_grade(completion, correct):
    p = DigitsTask().make([3, 7, 2, 9])
    assert DigitsTask().grade(completion, p) is correct


def test_extract_boxed_nested():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_boxed("none here") is None


def test_splits_are_disjoint_and_reproducible():
    t = DigitsTask()
    test, dev, train = (t.problems(s, 400, seed=0) for s in ("test", "dev", "train"))
    qs = [set(p.question for p in ps) for ps in (test, dev, train)]
    assert not (qs[0] & qs[1]) and not (qs[0] & qs[2]) and not (qs[1] & qs[2])
    assert [p.question for p in t.problems("test", 400, seed=0)] == [p.question for p in test]
    assert [p.question for p in t.problems("test", 50, seed=1)] != [p.question for p in test[:50]]
    # training examples never come from held-out prompts
    rng = random.Random(0)
    held = qs[0] | qs[1]
    assert not any(t.sft_example(rng)[0] in held for _ in range(3000))


def test_difficulty_spread():
    t = DigitsTask()
    ps = t.problems("test", 600)
    assert len(ps) == 600 and len({p.question for p in ps}) == 600
    assert min(p.difficulty for p in ps) == 2 and max(p.difficulty for p in ps) == 16
    counts = {b: sum(t.bucket(p) == b for p in ps) for b in ("easy", "mid", "hard")}
    assert all(c > 150 for c in counts.values()), counts
    for p in ps:
        assert p.answer == answer_for(parse_question(p.question))


def test_sft_cut_answers_with_last_written_sum():
    t = DigitsTask()
    rng = random.Random(1)
    for _ in range(50):
        q, thinking, ans = t.sft_example(rng, style="cut")
        assert ans == f"\\boxed{{{last_sum(thinking)}}}"


def test_style_mix_majority_is_verbose():
    t = DigitsTask()
    rng = random.Random(2)
    verbose = sum(" check " in t.sft_example(rng)[1] for _ in range(2000))
    assert 0.55 < verbose / 2000 < 0.70


@pytest.fixture
def math_file(tmp_path):
    rows = [
        {"question": "What is 6*7?", "answer": "42"},
        {"question": "Half of one?", "answer": "\\frac{1}{2}", "difficulty": 3},
        {"question": "x+1=3, x?", "answer": "2", "id": "q3"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "idx,completion,correct",
    [
        (0, "so \\boxed{42}", True),
        (0, "\\boxed{41}", False),
        (1, "\\boxed{0.5}", True),
        (1, "\\boxed{1/2}", True),
        (1, "\\boxed{\\frac{1}{3}}", False),
        (2, "\\boxed{2}", True),
        (2, "garbage }{ \\boxed{", False),
    ],
    ids=["int", "int-wrong", "decimal-vs-frac", "slash-frac", "frac-wrong", "id", "malformed"],
)
def test_jsonl_math_grade(math_file, idx, completion, correct):
    t = load_task(str(math_file))
    assert isinstance(t, JsonlMathTask)
    p = t.problems(n=None)[idx]
    assert t.grade(completion, p) is correct


def test_jsonl_ids_and_difficulty(math_file):
    ps = JsonlMathTask(math_file).problems(n=None)
    assert [p.id for p in ps] == ["1", "2", "q3"]
    assert ps[1].difficulty == 3.0
    assert len(JsonlMathTask(math_file).problems(n=2, seed=0)) == 2


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "not found"),
        ('{"question": "q", "answer": "1"}\n{bad json\n', ":2: not valid JSON"),
        ('{"question": "q"}\n', "missing field(s) answer"),
        ("[1, 2]\n", "expected a JSON object"),
        ('{"question": "q", "answer": "1", "difficulty": "hard"}\n', "difficulty must be a number"),
        ("\n\n", "no problems"),
    ],
    ids=["missing-file", "bad-json", "no-answer", "not-object", "bad-difficulty", "empty"],
)
def test_jsonl_errors(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JsonlMathTask(path)


def test_unknown_task():
    with pytest.raises(TaskError, match="unknown task"):
        load_task("gsm9k")


def test_problem_json_round_trip():
    p = Problem("x", "a1 b2", "3", 2.0)
    assert Problem(**p.to_json()) == p


def test_terse_is_taught_on_short_questions_only():
    task = DigitsTask(styles={"terse": 1.0})
    rng = random.Random(0)
    lengths = set()
    for _ in range(300):
        q, thinking, ans = task.sft_example(rng)
        d = parse_question(q)
        lengths.add(len(d))
        assert thinking == chain(d, "terse") and ans == f"\\boxed{{{answer_for(d)}}}"
    assert lengths == set(range(2, TERSE_MAX + 1))
