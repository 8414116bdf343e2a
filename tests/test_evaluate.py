"""`effort eval` end to end, and clear one-line errors for bad input to every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from effort_server.training.evaluate import EvalConfig, Setting, run_eval

REPO = Path(__file__).resolve().parent.parent
EFFORT = [sys.executable, "-m", "effort_server.cli"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("full", Setting("full")),
        ("none", Setting("none")),
        ("budget:16", Setting("budget", 16.0)),
        ("frac:0.25", Setting("frac", 0.25)),
        ("effort:0.5", Setting("effort", 0.5)),
        ("route:0.25", Setting("route", 0.25)),
        ("control:1", Setting("control", 1.0)),
    ],
)
def test_setting_parse(text, expected):
    assert Setting.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "budget:-1",
        "budget:2.5",
        "frac:1.5",
        "turbo",
        "budget:",
        "frac:x",
        "effort:2",
        "effort:",
        "route:1.5",
        "route:",
    ],
)
def test_setting_parse_rejects(text):
    with pytest.raises(ValueError):
        Setting.parse(text)


def test_run_eval_writes_three_outputs(evaluator, tmp_path):
    cfg = EvalConfig(n=24, settings="full,budget:6,frac:0.5,none", out=str(tmp_path / "ev"))
    payload = run_eval(cfg, evaluator=evaluator)
    out = tmp_path / "ev"
    data = json.loads((out / "results.json").read_text())
    assert len(data["results"]) == 4 * 24
    rows = {s: [r for r in data["results"] if r["setting"] == s] for s in ("full", "budget:6", "frac:0.5", "none")}
    assert all(r["reasoning_tokens"] <= 6 for r in rows["budget:6"])
    assert all(r["reasoning_tokens"] == 0 for r in rows["none"])
    full_len = {r["id"]: r["reasoning_tokens"] for r in rows["full"]}
    assert all(r["budget"] == -(-full_len[r["id"]] // 2) for r in rows["frac:0.5"])
    s = payload["summary"]
    assert s["base|full"]["all"]["accuracy"] > s["base|budget:6"]["all"]["accuracy"]
    assert s["base|full"]["all"]["mean_reasoning"] > s["base|frac:0.5"]["all"]["mean_reasoning"]
    md = (out / "results.md").read_text()
    assert "| base | frac:0.5 | hard |" in md and "tokens / correct" in md
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_eval_effort_is_what_the_server_does(evaluator, client, tmp_path):
    """`effort:E` in the evaluator and a request with effort E on the live server choose the same
    option with the same budget for every prompt, and think the same number of tokens. Each
    prompt is asked once (the server's history would correct a repeat's predicted length)."""
    from effort_server.training.tasks import DigitsTask

    probs = DigitsTask().problems("test", 16, seed=77)
    for e, group in ((0.25, probs[:8]), (0.5, probs[8:])):
        cfg = EvalConfig(
            n=16,
            seed=77,
            adapters="base,dler,dler-da,dler-merged,e1",
            settings=f"base@effort:{e}",
            out=str(tmp_path / f"e{e}"),
        )
        rows = {r["id"]: r for r in run_eval(cfg, evaluator=evaluator)["results"]}
        for p in group:
            r = client.chat.completions.create(
                model="effort-tiny",
                messages=[{"role": "user", "content": p.question}],
                temperature=0,
                max_tokens=512,
                extra_body={"effort": e},
            )
            rep, row = r.model_extra["effort"], rows[p.id]
            assert (rep["choice"], rep["thinking_budget"], rep["spend"]) == (
                row["choice"],
                row["budget"],
                row["spend"],
            )
            assert r.usage.completion_tokens_details.reasoning_tokens == row["reasoning_tokens"], (p.question, rep)


@pytest.mark.slow
def test_eval_cli_end_to_end(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        EFFORT + ["eval", "--n", "10", "--settings", "full,budget:4", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert {"results.json", "results.md", "plot.png"} <= {p.name for p in out.iterdir()}
    assert len(json.loads((out / "results.json").read_text())["results"]) == 20


@pytest.fixture
def bad_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "1+1", "answer": "2"}\nnot json\n')
    return p


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval", "--task", "gsm9k"], "unknown task"),
        (["eval", "--task", "/nonexistent/file.jsonl"], "not found"),
        (["eval", "--task", "{bad}"], ":2: not valid JSON"),
        (["eval", "--settings", "budget:-5"], "integer >= 0"),
        (["eval", "--settings", "turbo"], "unknown setting"),
        (["eval", "--adapters", "ghost"], "unknown adapter"),
        (["eval", "--n", "0"], ">= 1"),
        (["data", "--task", "gsm9k", "--out", "x.jsonl"], "unknown task"),
        (["train", "base", "--heads", "8"], "head size"),
        (["train", "base", "--out", "."], "exists"),
        (["train", "base", "--styles", "turbo=1"], "bad style"),
        (["train", "base", "--recheck-passes", "0"], "recheck_passes"),
        (["report", "base", "--samples", "1"], "--samples"),
        (["serve", "--port", "0"], "port"),
        (["serve", "--effort-low", "2"], "effort_low"),
        (["serve", "--effort-adapters", "nope"], "effort_adapters"),
        (["serve", "--config", "/nonexistent/server.json"], "config file not found"),
        (["serve", "--engine-args", "[1]"], "JSON object"),
        (["bench", "serve", "--concurrency", "x"], "--concurrency"),
    ],
    ids=[
        "unknown-task",
        "missing-file",
        "bad-jsonl-line",
        "negative-budget",
        "bad-setting",
        "unknown-adapter",
        "zero-n",
        "data-unknown-task",
        "head-size",
        "out-exists",
        "base-styles",
        "base-passes",
        "report-samples",
        "serve-port",
        "serve-effort-level",
        "serve-effort-rules",
        "serve-config-missing",
        "serve-engine-args",
        "bench-concurrency",
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, bad_jsonl, tmp_path):
    args = [str(bad_jsonl) if a == "{bad}" else a for a in args]
    r = subprocess.run(
        EFFORT + args,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("effort: error:"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_data_export(tmp_path):
    out = tmp_path / "d.jsonl"
    r = subprocess.run(EFFORT + ["data", "--n", "30", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 30 and {"question", "answer", "difficulty", "id"} <= set(rows[0])
