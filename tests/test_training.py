"""RL recipes: reward tables, dynamic sampling, quick runs served by name, resume, merge."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from effort_server.training.recipes.dler import dler_reward
from effort_server.training.recipes.dler_da import da_limit, low_quartile, update_running
from effort_server.training.recipes.e1 import (
    calibration_points,
    decision_weights,
    e1_reward,
    reference_lengths,
    relabel,
)
from effort_server.training.rollouts import Rollout, group_keep_mask, parse_rollout

REPO = Path(__file__).resolve().parent.parent


def R(tokens=20, reasoning=10, closed=True, truncated=False, correct=True, effort=1.0):
    return Rollout("p", effort, tokens, reasoning, closed, truncated, correct)


@pytest.mark.parametrize(
    "rollout,limit,want",
    [
        (R(), None, 1.0),
        (R(correct=False), None, 0.0),
        (R(truncated=True, closed=False, correct=False), None, 0.0),  # cut by the cap: no answer
        (R(truncated=True, correct=True), None, 0.0),  # even if a boxed digit happened to be in it
        (R(tokens=30), 29, 0.0),  # over a per-prompt limit (dler-da)
        (R(tokens=29), 29, 1.0),
        (R(closed=False, correct=True), None, 0.1),  # answered without closing the thinking
    ],
)
def test_dler_reward(rollout, limit, want):
    assert dler_reward(rollout, limit) == want


@pytest.mark.parametrize(
    "limit,p,own,want",
    [
        (100, 0.0, 20, 100),
        (100, 0.5, 20, 100),  # solved at most half the time: DLER's limit
        (100, 0.65, 20, 59),
        (100, 0.8, 20, 18),
        (100, 1.0, 20, 18),  # toward 0.9 x its own length
        (100, 1.0, None, 100),  # no correct length seen yet
        (100, 1.0, 200, 100),  # never looser than DLER's
        (78, 1.0, 13, 11),
        (78, 1.0, 1, 1),
    ],
)
def test_da_limit_tightens_with_pass_rate_toward_own_length(limit, p, own, want):
    assert da_limit(limit, p, own, shrink=0.9, p_ref=0.5, p_full=0.8) == want


@pytest.mark.parametrize(
    "lengths,want", [([], None), ([7], 7), ([7, 12, 12, 12], 12), ([7, 12, 17, 17, 17, 17, 17, 30], 17)]
)
def test_low_quartile_ignores_one_lucky_short_guess(lengths, want):
    assert low_quartile(lengths) == want


def test_da_default_limit_pays_the_terse_chain_on_a_solved_prompt():
    """Terse / plain completion lengths are 12/13 .. 54/69 tokens: the default shrink keeps the
    terse chain under the limit of a prompt solved every time with the plain one."""
    for plain, terse in [(13, 12), (17, 15), (29, 24), (69, 54)]:
        assert terse <= da_limit(78, 1.0, plain) < plain


def test_dler_limit_from_limit_frac():
    """L = limit_frac x the base's full-effort reasoning + 8; dler-da shares the option."""
    from effort_server.training.recipes.dler import DLER, DlerOptions
    from effort_server.training.recipes.dler_da import DLERDA, DlerDaOptions

    assert DLER.default_cap(200) == 118
    assert DLER.default_cap(120) == 74  # the shipped adapters' L
    assert DLER.default_cap(200, DlerOptions(limit_frac=0.3)) == 68
    assert DLERDA.default_cap(200, DlerDaOptions(limit_frac=1.0)) == 208


def test_running_average():
    assert update_running(None, 0.25) == 0.25
    assert update_running(0.25, 1.0) == pytest.approx(0.625)
    assert update_running(0.5, 0.5, keep=0.9) == pytest.approx(0.5)
    assert update_running(0.5, None) == 0.5 and update_running(None, None) is None


@pytest.mark.parametrize(
    "rollout,t_ref,want",
    [
        (R(reasoning=50, effort=0.5), 100, 1.0),  # exactly on target
        (R(reasoning=65, effort=0.5), 100, 0.5),  # 0.15 over, band 0.3
        (R(reasoning=35, effort=0.5), 100, 0.5),  # 0.15 under
        (R(reasoning=100, effort=0.5), 100, 0.0),  # full length at half effort
        (R(reasoning=100, effort=1.0), 100, 1.0),
        (R(reasoning=44, effort=1.0), 100, 0.0),  # effort 1.0 is not paid for a short path
        (R(reasoning=50, effort=0.5, correct=False), 100, 0.0),
        (R(reasoning=0, effort=0.5, truncated=True, closed=False, correct=False), 100, 0.0),
        (R(reasoning=50, effort=0.5), 0, 0.0),  # unknown reference length
    ],
)
def test_e1_reward(rollout, t_ref, want):
    assert e1_reward(rollout, t_ref, band=0.3) == pytest.approx(want)


def test_calibration_points_start_at_the_shortest_path_and_keep_each_rise():
    realised = {0.2: 0.31, 0.25: 0.30, 0.35: 0.31, 0.4: 0.66, 0.45: 0.64, 0.5: 0.78, 0.6: 0.79, 0.9: 0.94, 1.0: 0.97}
    assert calibration_points(realised) == [[0.30, 0.25], [0.66, 0.4], [0.78, 0.5], [0.94, 0.9], [0.97, 1.0]]
    assert calibration_points({0.5: 0.4}) == [[0.4, 0.5]]
    # the shortest path starts the curve, wherever its control is
    assert calibration_points({0.2: 0.34, 0.3: 0.31, 0.4: 0.64, 1.0: 0.95}) == [[0.31, 0.3], [0.64, 0.4], [0.95, 1.0]]


def test_calibration_points_leave_out_a_full_length_control_less_accurate_than_one_of_about_the_same_length():
    realised = {0.2: 0.35, 0.35: 0.36, 0.4: 1.035, 0.45: 1.041, 0.5: 1.125}
    accuracy = {0.2: 0.94, 0.35: 0.98, 0.4: 0.97, 0.45: 1.0, 0.5: 0.99}
    assert calibration_points(realised) == [[0.35, 0.2], [1.035, 0.4], [1.125, 0.5]]
    # 0.40 is out (0.45: same length, 3 points better); below full length nothing is filtered (0.2 stays)
    assert calibration_points(realised, accuracy) == [[0.35, 0.2], [1.041, 0.45], [1.125, 0.5]]
    # less than `worse` apart: both stay
    assert calibration_points(realised, {**accuracy, 0.4: 0.99}) == [[0.35, 0.2], [1.035, 0.4], [1.125, 0.5]]
    # a more accurate control of another length does not push one out
    assert calibration_points({0.6: 0.9, 1.0: 1.2}, {0.6: 0.9, 1.0: 1.0}) == [[0.9, 0.6], [1.2, 1.0]]


def test_relabel_picks_per_prompt_and_effort_the_nearest_fitting_sample():
    plain, mid, full = [1, 2, 9], [1, 2, 3, 4, 9], [1, 2, 3, 4, 5, 6, 9]
    got = relabel(
        {"p": [(0.3, plain), (0.62, mid), (1.0, full)], "q": [(1.0, full)], "empty": []},
        grid=[0.25, 0.5, 0.6, 0.75, 0.95, 1.0],
        tol=0.06,
    )
    assert got == [
        ("p", 0.25, plain),
        ("p", 0.6, mid),
        ("p", 0.95, full),
        ("p", 1.0, full),
        ("q", 0.95, full),
        ("q", 1.0, full),
    ]  # 0.5 and 0.75: no sample within 0.06


@pytest.mark.parametrize(
    "rows,quantile,want",
    [
        # a base that answers an easy prompt with its short path when greedy: T(x) is still its full length
        ([("p", 15, True), ("p", 64, True), ("p", 64, True), ("p", 20, True)], 0.75, {"p": 64.0}),
        ([("p", 15, True), ("p", 64, True), ("p", 64, True), ("p", 20, True)], 0.0, {"p": 15.0}),
        ([("p", 30, True), ("p", 90, False)], 0.75, {"p": 30.0}),  # wrong answers do not count
        ([("p", 30, False), ("q", 0, True)], 0.75, {"q": 1.0}),  # none correct: left out; never 0
        ([("p", 10, True, [1, 2])], 1.0, {"p": 10.0}),  # extra fields (completion ids) are ignored
    ],
)
def test_reference_length_is_a_quantile_of_the_correct_lengths(rows, quantile, want):
    assert reference_lengths(rows, quantile) == want


@pytest.mark.parametrize(
    "completions,want",
    [
        ([[1, 2, 9], [1, 2, 3, 9]], [[1, 1, 4], [1, 1, 4, 1]]),  # close after 2 tokens, or go on
        ([[1, 2, 9], [1, 2, 3, 9], [1, 2, 3, 4, 9]], [[1, 1, 4], [1, 1, 4, 4], [1, 1, 4, 4, 1]]),
        ([[1, 2, 9], [1, 2, 9]], [[1, 1, 1], [1, 1, 1]]),  # the same path twice: no decision
        ([[5, 6]], [[1, 1]]),
        ([[1, 2], [1, 2, 3]], [[1, 1], [1, 1, 4]]),  # a prefix: only the longer one has the token
    ],
)
def test_decision_weights_mark_where_paths_part(completions, want):
    assert decision_weights(completions, 4.0) == want


def test_sft_loss_is_the_weighted_mean_of_completion_token_losses(model_dir):
    import torch
    from effort_server.training.context import Context
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ctx = Context(task=None, problems={}, tokenizer=tok, markers=None, max_completion=64, model=model)
    prompt = ctx.render("a3 b4 c5")
    completion = tok("<think>a3 b4>7 c5>2</think>\\boxed{2}<|im_end|>", add_special_tokens=False)["input_ids"]
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + completion])).logits[0, len(p_ids) - 1 : -1]
    per_token = torch.nn.functional.cross_entropy(logits, torch.tensor(completion), reduction="none")
    w = [1.0] * len(completion)
    w[3] = 5.0
    # lr 0: the model does not move, so the returned loss is the first step's
    assert ctx.sft([(prompt, completion)], steps=1, lr=0.0) == pytest.approx(per_token.mean().item(), rel=1e-4)
    want = (per_token * torch.tensor(w)).sum().item() / sum(w)
    assert ctx.sft([(prompt, completion, w)], steps=1, lr=0.0) == pytest.approx(want, rel=1e-4)
    # `done` is asked after step check_from, then every check_every steps; True stops the training
    asked = []
    ctx.sft(
        [(prompt, completion)], steps=9, lr=0.0, done=lambda n: asked.append(n) or n == 6, check_from=4, check_every=2
    )
    assert asked == [4, 6]
    asked.clear()
    ctx.sft(
        [(prompt, completion)], steps=9, lr=0.0, done=lambda n: asked.append(n) and False, check_from=4, check_every=2
    )
    assert asked == [4, 6, 8]  # never at the last step: the training ends there anyway


def test_control_applies_calibration():
    from effort_server.training.recipes.e1 import CONTROL

    from effort_server.contract.manifest import Control

    c = Control.model_validate({**CONTROL.model_dump(), "calibration": [[0.2, 0.1], [0.6, 0.5], [1.0, 1.0]]})
    assert c.value_for(0.4) == pytest.approx(0.3)
    assert c.value_for(0.05) == 0.1 and c.value_for(1.0) == 1.0
    assert c.for_effort("a1 b2", 0.4).startswith("Think for effort 0.30 of full.\n")
    assert CONTROL.for_effort("a1 b2", 0.4).startswith("Think for effort 0.40 of full.\n")  # no calibration = identity


def test_mixing_control_serves_an_effort_between_two_paths_as_a_per_prompt_mixture():
    from effort_server.training.recipes.e1 import CONTROL

    from effort_server.contract.manifest import Control

    c = Control.model_validate(
        {**CONTROL.model_dump(), "calibration": [[0.3, 0.2], [0.7, 0.4], [1.0, 1.0]], "mix": True}
    )
    prompts = [f"a{i} b{i % 7}" for i in range(2000)]
    assert {c.value_for(0.1, p) for p in prompts} == {0.2} and {c.value_for(1.0, p) for p in prompts} == {1.0}
    assert {c.value_for(0.7, p) for p in prompts} == {0.4}  # on a point: its control, for every prompt
    for effort, hi in ((0.4, 0.4), (0.5, 0.4), (0.6, 0.4), (0.85, 1.0)):
        lo = 0.2 if hi == 0.4 else 0.4
        got = [c.value_for(effort, p) for p in prompts]
        assert set(got) == {lo, hi}  # only trained control values, never one between
        share = got.count(hi) / len(got)
        want = (effort - 0.3) / 0.4 if hi == 0.4 else 0.5
        assert share == pytest.approx(want, abs=0.04)  # the average realised ratio is the effort
    for p in prompts[:200]:  # per prompt: the same control every time, never lower for a higher effort
        seq = [c.value_for(e / 20, p) for e in range(21)]
        assert seq == sorted(seq) and seq == [c.value_for(e / 20, p) for e in range(21)]
    assert c.for_effort("a1 b2", 0.1).startswith("Think for effort 0.20 of full.\n")


@pytest.mark.parametrize(
    "rewards,group,want",
    [
        ([1, 0, 1, 0], 4, [True] * 4),
        ([1, 1, 1, 1, 0, 1, 0, 0], 4, [False] * 4 + [True] * 4),
        ([0, 0, 0.1, 0.1], 2, [False] * 4),
        ([0.5, 0.5 + 1e-9], 2, [False, False]),  # equal within tolerance
    ],
)
def test_dynamic_sampling_mask(rewards, group, want):
    assert group_keep_mask(rewards, group) == want


def test_dynamic_sampling_mask_rejects_ragged_groups():
    with pytest.raises(ValueError):
        group_keep_mask([1, 0, 1], 2)


@pytest.fixture(scope="module")
def tok_markers(model_dir):
    from transformers import AutoTokenizer

    from effort_server.contract.markers import Markers

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok, Markers.from_tokenizer(tok, "<think>", "</think>")


@pytest.mark.parametrize(
    "text,eos,cap,want",
    [
        ("<think>a3 b4>7</think>\\boxed{7}", True, 64, dict(correct=True, closed=True, truncated=False)),
        ("<think>a3 b4>7</think>\\boxed{8}", True, 64, dict(correct=False, closed=True, truncated=False)),
        ("<think>a3 b4>7</think>\\boxed{77}", True, 64, dict(correct=False, closed=True)),  # malformed: two digits
        ("<think>a3 b4>7</think>the answer is 7", True, 64, dict(correct=False, closed=True)),  # no boxed answer
        ("<think>a3 b4>7 \\boxed{7}", False, None, dict(correct=False, closed=False, truncated=True)),  # cut, no EOS
        ("<think>a3 b4>7</think>\\boxed{7}", False, None, dict(correct=True, truncated=True)),  # hit cap at the answer
    ],
)
def test_parse_rollout(tok_markers, task, text, eos, cap, want):
    tok, markers = tok_markers
    ids = tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if eos else [])
    prob = task.make([3, 4])
    r = parse_rollout(ids, prob, task, tok, markers, cap=cap or len(ids))
    for k, v in want.items():
        assert getattr(r, k) == v, (k, r)
    assert r.reasoning_tokens == len(
        tok.encode("a3 b4>7" + (" \\boxed{7}" if "</think>" not in text else ""), add_special_tokens=False)
    )


# --- runs ------------------------------------------------------------------------------------
def _effort(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "effort_server.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("kind", ["dler", "dler-da", "e1"])
def test_quick_run_writes_a_servable_adapter(quick_adapters, kind):
    from effort_server.server.registry import load_adapter

    from effort_server.contract.manifest import AdapterManifest

    folder = quick_adapters / f"q-{kind}"
    m = load_adapter(folder)  # peft files + valid manifest
    assert m.kind == kind and m.name == f"q-{kind}"
    assert m.training["steps"] == 2 and m.training["recipe"] == kind
    assert m.base_model_hash and m.base_model_hash != "unknown"
    peft_cfg = json.loads((folder / "adapter_config.json").read_text())
    assert peft_cfg["target_modules"] == sorted(peft_cfg["target_modules"]) and len(peft_cfg["target_modules"]) > 1
    assert not (folder / "README.md").exists()  # peft's boilerplate card
    assert (folder / "training_log.jsonl").is_file() and (folder / "curves.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (folder / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "accuracy", "mean_length", "entropy", "groups_dropped"):
        assert key in rows[0], key
    lrs = [r["lr"] for r in rows]  # the session trains dler-da with --lr-schedule linear, the others constant
    assert m.training["hyper"]["lr_schedule"] == ("linear" if kind == "dler-da" else "constant")
    assert (lrs[1] < lrs[0]) if kind == "dler-da" else (lrs[1] == lrs[0] > 0), lrs
    import gzip

    roll = [json.loads(x) for x in gzip.open(folder / "rollouts.jsonl.gz", "rt")]
    assert len(roll) == 2 * 2 * 4  # steps x prompts x generations
    assert {"prompt_id", "effort", "completion_tokens", "correct"} <= set(roll[0])
    if kind == "e1":
        assert m.control.kind == "prompt-prefix" and {r["effort"] for r in roll} <= {
            round(0.2 + 0.05 * i, 2) for i in range(17)
        }
        anchor = m.training["hyper"]["anchor"]  # the supervised anchor after GRPO ran on the base's completions
        assert anchor["steps"] == 2 and anchor["prompts"] == 4 and anchor["base_full"] >= 1
    assert AdapterManifest.read(folder) == m
    assert not list(quick_adapters.glob(".*partial*"))


@pytest.mark.parametrize("kind", ["dler", "dler-da", "e1"])
def test_server_serves_shipped_adapters_by_name(client, model_dir, kind):
    assert kind in {m.id for m in client.models.list().data}
    msg = [{"role": "user", "content": "a3 b4 c5"}]
    r = client.chat.completions.create(model=kind, messages=msg, max_tokens=64, extra_body={"effort": 0.5})
    base = client.chat.completions.create(
        model=model_dir.name, messages=msg, max_tokens=64, extra_body={"effort": 0.5, "adapters": "none"}
    )
    assert r.model == kind and r.model_extra["effort"]["adapter"] == kind
    assert r.usage.completion_tokens > 0
    # e1 writes its effort control into the prompt; the DLER adapters leave the prompt alone
    extra = r.usage.prompt_tokens - base.usage.prompt_tokens
    assert (extra > 5) if kind == "e1" else (extra == 0)


@pytest.mark.parametrize("kind", ["dler", "dler-da", "e1"])
def test_quick_adapters_generate_in_the_engine(quick_adapters, evaluator, task, kind):
    """A freshly trained adapter loads into vLLM as the server loads it (LoRA + its manifest's control)."""
    from effort_server.server.registry import scan

    adapter = scan([quick_adapters])[f"q-{kind}"]
    probs = task.problems("test", 4, seed=5)
    rows = evaluator.generate(probs, task, adapter, [None] * len(probs), max_tokens=64, effort=0.5)
    assert len(rows) == 4 and all(r["completion_tokens"] > 0 for r in rows)
    plain = evaluator.prompt_ids(probs[0].question)
    assert (len(evaluator.prompt_ids(probs[0].question, adapter.manifest, 0.5)) > len(plain) + 5) == (kind == "e1")


@pytest.mark.slow
def test_kill_and_resume_loses_at_most_one_save_interval(tmp_path, model_dir):
    run = tmp_path / "run"
    out = tmp_path / "adapter"
    args = [
        "train",
        "dler",
        "--quick",
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--threads",
        "1",
        "--model",
        str(model_dir),
        "--run-dir",
        str(run),
        "--out",
        str(out),
        "--name",
        "resumed",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "effort_server.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.time()
    while not (run / "checkpoint-2" / "effort_state.json").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() - t0 < 240
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # no half-written adapter
    done_before = max(json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines())
    r = _effort(*args, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout + r.stderr
    steps = [json.loads(x)["step"] for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6 and steps[0] == 1  # no gap, no duplicate
    lost = done_before - 2  # steps redone after the resume
    assert 0 <= lost <= 2
    import gzip

    roll = [json.loads(x) for x in gzip.open(out / "rollouts.jsonl.gz", "rt")]
    assert sorted({x["step"] for x in roll}) == list(range(6))
    assert len(roll) == 6 * 2 * 4

    # resumed again once all its steps are done (as after a crash in the evaluation): no step more
    import torch
    from safetensors.torch import load_file

    before = load_file(str(out / "adapter_model.safetensors"))
    r = _effort(*args, "--resume", "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "is at --max-steps 6" in r.stdout + r.stderr
    assert [json.loads(x)["step"] for x in (out / "training_log.jsonl").read_text().splitlines()][-1] == 6
    after = load_file(str(out / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["train", "nope"], "invalid choice"),
        (["train", "dler", "--quick", "--task", "{data}"], "missing field(s) answer"),
        (["train", "dler", "--quick", "--lora-targets", "q_proj,wq"], "wq not found"),
        (["train", "dler", "--quick", "--out", "{exists}"], "exists"),
        (["train", "dler", "--quick", "--generations", "1"], "--generations"),
        (["train", "dler", "--quick", "--lr-schedule", "step"], "--lr-schedule"),
        (["train", "dler", "--resume", "--run-dir", "{empty}"], "no checkpoint"),
        (["train", "dler", "--quick", "--limit-frac", "0"], "--limit-frac"),
        (["train", "dler-da", "--quick", "--limit-frac", "-1"], "--limit-frac"),
        (["merge", "--adapter", "nope"], "unknown adapter"),
        (["merge", "--adapter", "{noisy}", "--keep", "0"], "--keep"),
    ],
)
def test_training_bad_input_is_one_clear_line(tmp_path, adapter_dir, args, msg):
    data = tmp_path / "noanswer.jsonl"
    data.write_text('{"question": "1+1"}\n')
    exists = tmp_path / "exists"
    exists.mkdir()
    (tmp_path / "empty").mkdir()
    subst = {
        "{data}": str(data),
        "{exists}": str(exists),
        "{empty}": str(tmp_path / "empty"),
        "{noisy}": str(adapter_dir / "noisy"),
    }
    argv = [subst.get(a, a) for a in args]
    if argv[:2] != ["train", "nope"] and argv[0] == "train":
        argv += [] if "--run-dir" in argv else ["--run-dir", str(tmp_path / "run")]
        argv += [] if "--out" in argv else ["--out", str(tmp_path / "new-adapter")]
    elif argv[0] == "merge" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "new-merged")]
    r = _effort(*argv)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-1500:])
    assert msg in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "new-adapter").exists()


def test_merge_identity_reproduces_the_source(tmp_path, model_dir, adapter_dir):
    """keep 1, scale 1, rank >= source rank: the merged adapter's logits equal the source's."""
    import torch
    from effort_server.training.merge import MergeConfig, lora_deltas, merge
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = merge(
        MergeConfig(
            adapter=str(adapter_dir / "noisy"), keep=1.0, scale=1.0, rank=8, out=str(tmp_path / "m"), eval_n=0
        ),
        log=lambda *_: None,
    )
    x = torch.tensor([[5, 17, 42, 9, 100, 3]])
    src = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter_dir / "noisy")).eval()
    new = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out)).eval()
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        a, b, c = src(x).logits, new(x).logits, base(x).logits
    assert (a - c).abs().max() > 1e-2  # the source adapter really changes the model
    assert torch.allclose(a, b, atol=1e-4)
    d_src, d_new = lora_deltas(src), lora_deltas(new)
    assert set(d_src) == set(d_new)


def test_merge_keeps_only_the_most_changed_entries(tmp_path, model_dir, adapter_dir):
    import torch
    from effort_server.training.merge import select_update, to_lora

    d = torch.tensor([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]])
    s = select_update(d, 2 / 6)
    assert torch.equal(s, torch.tensor([[0.0, -5.0, 0.0], [3.0, 0.0, 0.0]]))
    a, b = to_lora(s, 4)  # rank beyond the matrix rank: exact, zero-padded
    assert a.shape == (4, 3) and b.shape == (2, 4)
    assert torch.allclose(b @ a, s, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(64, 32, generator=g)
    assert (select_update(big, 0.25) != 0).sum() == 512
    from effort_server.training.merge import MergeConfig, merge

    from effort_server.contract.manifest import AdapterManifest

    out = merge(
        MergeConfig(adapter=str(adapter_dir / "noisy"), keep=0.2, scale=0.5, out=str(tmp_path / "m2"), eval_n=0),
        log=lambda *_: None,
    )
    m = AdapterManifest.read(out)
    assert m.kind == "merged" and m.training["keep"] == 0.2 and m.training["rank"] == 16
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
