"""vLLM enforces thinking budgets at exactly the requested count; LoRA adapters run in vLLM."""

import pytest


@pytest.fixture(scope="module")
def hard(task):
    return [p for p in task.problems("test", 200, seed=5) if p.difficulty >= 12][:8]


@pytest.mark.parametrize("budget", [0, 1, 3, 8, 21])
def test_budget_cuts_reasoning_exactly(evaluator, task, hard, budget):
    rows = evaluator.generate(hard, task, None, [budget] * len(hard))
    for r in rows:
        assert r["reasoning_tokens"] == budget, r
        assert r["closed"] and r["budget_hit"]
        assert "\\boxed{" in r["answer_text"]  # the model answers after the forced end


def test_no_budget_thinks_to_the_end(evaluator, task, hard):
    rows = evaluator.generate(hard, task, None, [None] * len(hard))
    assert all(r["closed"] and r["reasoning_tokens"] > 21 and not r["budget_hit"] for r in rows)
    assert all("\\boxed{" in r["answer_text"] for r in rows)


def test_samples_seeded_per_prompt(evaluator, task, hard):
    """Temperature-1 samples are seeded per prompt (seed and prompt id): a prompt draws the same
    samples whatever else is in the batch, and the same question under another id draws its own
    (one seed on every request gave every prompt the same random numbers)."""
    import dataclasses

    p = hard[0]
    twin = dataclasses.replace(p, id=p.id + "-twin")
    kw = dict(temperature=1.0, samples=4, seed=3)
    alone = evaluator.generate([p], task, None, [None], **kw)
    batch = evaluator.generate([*reversed(hard), twin], task, None, [None] * (len(hard) + 1), **kw)
    mine = [r["reasoning"] for r in batch if r["id"] == p.id]
    theirs = [r["reasoning"] for r in batch if r["id"] == twin.id]
    assert [r["reasoning"] for r in alone] == mine
    assert len(mine) == len(theirs) == 4 and mine != theirs
    assert len(set(mine)) > 1  # the four samples differ from one another


def test_budget_cut_hurts(evaluator, task):
    """On prompts the model solves with full thinking, a cut at 25% of its length loses most."""
    probs = [p for p in task.problems("test", 80, seed=8) if p.difficulty >= 7]
    full = evaluator.generate(probs, task, None, [None] * len(probs))
    solved = [(p, r) for p, r in zip(probs, full) if r["correct"]]
    assert len(solved) >= 5
    cut = evaluator.generate(
        [p for p, _ in solved], task, None, [max(1, r["reasoning_tokens"] // 4) for _, r in solved]
    )
    assert sum(r["correct"] for r in cut) <= 0.5 * len(solved)


def test_lora_adapter_runs_in_vllm(evaluator, task, adapter_dir):
    from effort_server.server.registry import scan

    adapters = scan([adapter_dir])
    assert set(adapters) == {"noisy"}  # the corrupt folder is skipped
    adapter = adapters["noisy"]
    probs = task.problems("test", 6, seed=6)
    base = evaluator.generate(probs, task, None, [None] * len(probs))
    lora = evaluator.generate(probs, task, adapter, [None] * len(probs))
    assert [r["reasoning"] for r in base] != [r["reasoning"] for r in lora]
    again = evaluator.generate(probs, task, adapter, [None] * len(probs))
    assert [r["reasoning"] for r in lora] == [r["reasoning"] for r in again]


def test_e1_efforts_in_one_engine_call(evaluator, task, hard):
    """E1.finish measures every effort in one batch: each effort's rows come back with its own
    problems in order, and the shipped e1 reads the effort written into its prompts."""
    from effort_server.server.engine import default_adapter_dir
    from effort_server.server.registry import scan
    from effort_server.training.recipes.e1 import _at_efforts

    e1 = scan([default_adapter_dir()])["e1"]
    by = _at_efforts(evaluator, hard, task, e1, [0.25, 1.0])
    assert list(by) == [0.25, 1.0]
    for rows in by.values():
        assert [r["id"] for r in rows] == [p.id for p in hard]
    mean = {e: sum(r["reasoning_tokens"] for r in rows) / len(rows) for e, rows in by.items()}
    assert mean[0.25] < 0.6 * mean[1.0], mean
