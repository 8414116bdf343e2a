"""The difficulty router and the `auto` policy: fit / calibrate on small records, round trip,
decisions table-driven, bounded history, CLI errors."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from effort_server.server.config import ServerSettings
from effort_server.server.errors import EffortError
from effort_server.server.policy import Policy
from effort_server.server.registry import Adapter
from effort_server.server.routes import History
from effort_server.training.router_fit import (
    RouterCalibrateConfig,
    RouterFitConfig,
    fit_router,
    load_records,
    ranks,
    run_calibrate,
    spearman,
)

from effort_server.contract.manifest import AdapterManifest
from effort_server.contract.scoring import BASE, Route, Router, RouterError, choose

REPO = Path(__file__).resolve().parent.parent


def _question(rng, n):
    return " ".join(f"{chr(97 + i)}{rng.randrange(10)}" for i in range(n))


def make_records(path: Path, seed: int, n: int = 160) -> Path:
    """Synthetic eval records with a known truth: the base thinks 6 tokens per item; `fast` 2 per
    item and is always right; base at effort 0.5 is right only on short questions."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(2, 16)
        q = _question(rng, k)
        base_len = 6 * k + rng.randint(-2, 2)
        for adapter, setting, toks, ok in (
            (BASE, "full", base_len, True),
            (BASE, "route:0.5", min(base_len, 3 * k + 1), k <= 6),
            (BASE, "none", 0, k <= 2),
            ("fast", "full", 2 * k + rng.randint(0, 1), True),
        ):
            rows.append(dict(id=q, question=q, adapter=adapter, setting=setting, reasoning_tokens=toks, correct=ok))
    path.write_text(json.dumps({"config": {}, "results": rows}))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("router")
    fit_file, held = make_records(d / "fit.json", 0), make_records(d / "held.json", 1)
    router = fit_router(RouterFitConfig(records=str(fit_file), dim=1 << 12), log=lambda *_: None)
    router.save(d / "router")
    return d, fit_file, held


def test_ranks_and_spearman():
    assert ranks(np.array([10, 20, 20, 5])).tolist() == [1.0, 2.5, 2.5, 0.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_records_map_settings_to_routes(fitted):
    _, fit_file, _ = fitted
    rec = load_records(str(fit_file))
    assert set(rec.routes) == {Route(BASE, 1.0), Route(BASE, 0.5), Route(BASE, 0.0), Route("fast", 1.0)}
    assert set(rec.full) == {BASE, "fast"}


def test_fit_predicts_length_on_unseen_prompts(fitted):
    d, _, held = fitted
    router = Router.load(d / "router")
    rec = load_records(str(held))
    qs = sorted(rec.full[BASE])
    pred = [router.score(q).full_length[BASE] for q in qs]
    true = [rec.full[BASE][q][0] for q in qs]
    assert spearman(pred, true) >= 0.8
    assert router.manifest["quality"]["length"][BASE]["spearman_oof"] >= 0.8
    # the accuracy head of base@0.5 learnt that long prompts fail
    s_short, s_long = router.score("a1 b2 c3"), router.score(_question(random.Random(5), 16))
    assert s_short.p_correct[Route(BASE, 0.5)] > 0.8 > 0.2 > s_long.p_correct[Route(BASE, 0.5)]
    assert s_short.tokens[Route("fast", 1.0)] < s_short.tokens[Route(BASE, 1.0)]


def test_round_trip_is_exact(fitted, tmp_path):
    d, fit_file, _ = fitted
    a = Router.load(d / "router")
    a.save(tmp_path / "copy")
    b = Router.load(tmp_path / "copy")
    for q in ("a1 b2", _question(random.Random(3), 12), "anything else entirely"):
        sa, sb = a.score(q), b.score(q)
        assert sa.full_length == sb.full_length and sa.p_correct == sb.p_correct and sa.tokens == sb.tokens
    assert not list((tmp_path / "copy").glob(".router.*")), "temp files left behind"


def test_calibrate_replays_outcomes_and_meets_tolerance(fitted, tmp_path):
    d, _, held = fitted
    import shutil

    shutil.copytree(d / "router", tmp_path / "r")
    cal = run_calibrate(
        RouterCalibrateConfig(router=str(tmp_path / "r"), records=str(held), tolerance=0.01), log=lambda *_: None
    )
    assert cal["met_tolerance"]
    assert cal["auto"]["accuracy"] >= cal["best_fixed"]["accuracy"] - 0.01
    # the cheap always-right adapter is the right answer: far fewer tokens than the best fixed base route
    assert cal["auto"]["mean_reasoning"] <= 0.5 * cal["fixed"]["base@1"]["mean_reasoning"]
    assert Router.load(tmp_path / "r").margin == cal["margin"]


@pytest.mark.parametrize(
    "bad,msg",
    [("missing", "no router"), ("json", "invalid router"), ("shape", "shapes"), ("featuriser", "unknown featuriser")],
)
def test_broken_router_folder_is_a_clear_error(fitted, tmp_path, bad, msg):
    import shutil

    d, _, _ = fitted
    r = tmp_path / "r"
    shutil.copytree(d / "router", r)
    if bad == "missing":
        (r / "router.npz").unlink()
    elif bad == "json":
        (r / "router.json").write_text("{nope")
    elif bad == "shape":
        man = json.loads((r / "router.json").read_text())
        man["models"].append("ghost")
        (r / "router.json").write_text(json.dumps(man))
    else:
        man = json.loads((r / "router.json").read_text())
        man["featuriser"]["name"] = "bert"
        (r / "router.json").write_text(json.dumps(man))
    with pytest.raises(RouterError, match=msg):
        Router.load(r)


# -- the policy ---------------------------------------------------------------------------------
def _adapter(name):
    return Adapter(
        name, Path("/nonexistent") / name, AdapterManifest(name=name, kind="dler", base_model="x"), lora_id=1
    )


@pytest.fixture(scope="module")
def router(fitted):
    return Router.load(fitted[0] / "router")


def _policy(router, adapters=("fast",), **kw):
    return Policy(ServerSettings(**kw), {a: _adapter(a) for a in adapters}, "tiny", 100, router, History(100))


SHORT, LONG = "a1 b2 c3", _question(random.Random(7), 16)
CAP = 512 - 16 - 2  # effort 1 has no effort budget; the output limit minus the answer reserve still binds


@pytest.mark.parametrize(
    "kw,prompt,model,check",
    [
        (dict(), SHORT, None, lambda d: d.adapter == "fast" and d.route == "auto" and d.thinking_budget == CAP),
        # without the cheap adapter registered, auto must pick among the base's routes
        (dict(adapters=()), SHORT, None, lambda d: d.adapter is None and d.effort in (0.5, 1.0)),
        (dict(adapters=()), LONG, None, lambda d: d.adapter is None and d.effort == 1.0),
        # a huge margin accepts the cheapest route of all: no thinking
        (dict(router_margin=1.0), LONG, None, lambda d: d.effort == 0.0 and d.thinking_budget == 0),
        # hard cap and the output limit still bind
        (dict(max_budget=5), LONG, None, lambda d: d.thinking_budget == 5),
        (dict(adapters=(), max_budget=0), SHORT, None, lambda d: 8 <= d.thinking_budget <= CAP),
        # an explicit adapter restricts auto to its routes
        (dict(), LONG, "fast", lambda d: d.adapter == "fast"),
    ],
    ids=["cheap-adapter", "base-short", "base-long", "margin-1", "hard-cap", "min-budget", "explicit-adapter"],
)
def test_auto_decisions(router, kw, prompt, model, check):
    adapters = kw.pop("adapters", ("fast",))
    d = _policy(router, adapters, **kw).decide(model=model, effort="auto", max_tokens=512, prompt=prompt)
    assert check(d), d
    assert d.predicted["route"] and 0 <= d.predicted["p_correct"] <= 1 and "margin" in d.predicted
    assert "auto: route" in d.reason


def test_auto_budget_is_effort_times_predicted_length(router):
    pol = _policy(router, (), router_margin=0.3)
    d = pol.decide(model=None, effort="auto", max_tokens=512, prompt=SHORT)
    assert d.effort == 0.5, d
    full = router.score(SHORT).full_length[BASE]
    assert d.thinking_budget == max(16, int(np.ceil(0.5 * full * 1.2)))


def test_numeric_effort_uses_predicted_length(router):
    pol = _policy(router, ())
    short = pol.decide(model=None, effort=0.5, prompt=SHORT)
    long_ = pol.decide(model=None, effort=0.5, prompt=LONG)
    assert short.route == "fixed" and short.predicted["source"] == "router"
    assert short.spend < long_.spend and short.full_effort_tokens < long_.full_effort_tokens
    # without a prompt (no router input) the manifest's length applies: ceil(0.5 x 100 x 1.2)
    assert pol.decide(model=None, effort=0.5).spend == 60


@pytest.mark.parametrize(
    "kw,check",
    [
        # `fast` (a third of the base's tokens, always right) fits half the base's spend: it answers
        (dict(effort=0.5), lambda d: d.choice == "fast" and d.thinking_budget >= 2 * d.predicted["tokens"]),
        (dict(effort=1.0), lambda d: d.choice == "fast" and d.thinking_budget is None),  # tied, fewer tokens
        # pinned to the base: plain budget forcing at the spend, or no thinking where that is as good
        (
            dict(effort=0.5, rules='[[1, "base"]]'),
            lambda d: d.adapter is None and d.choice in ("base@budget", "base@none"),
        ),
        (dict(effort=0), lambda d: d.choice == "base@none" and d.thinking_budget == 0),
        (dict(effort=0.5, model="fast"), lambda d: d.choice == "fast"),
        (dict(effort=0.5, adapters="none"), lambda d: d.adapter is None),
        (dict(effort="auto", adapters="none"), lambda d: d.adapter is None and d.route == "auto"),
    ],
    ids=["half", "full", "pinned-base", "none", "named", "adapters-none", "auto-adapters-none"],
)
def test_numeric_effort_picks_the_most_accurate_option_that_fits(router, kw, check):
    rules = kw.pop("rules", "")
    d = _policy(router, ("fast",), effort_adapters=rules).decide(model=kw.pop("model", None), prompt=LONG, **kw)
    assert check(d), d
    assert d.predicted["source"] == "router" and (d.spend is not None) == (d.route == "fixed")


def test_auto_without_router_or_route_is_400(router):
    with pytest.raises(EffortError) as e:
        Policy(ServerSettings(), {}, "tiny", 100).decide(model=None, effort="auto", prompt=SHORT)
    assert e.value.status == 400 and e.value.code == "router_not_configured"
    pol = Policy(ServerSettings(), {"other": _adapter("other")}, "tiny", 100, router)
    with pytest.raises(EffortError) as e:
        pol.decide(model="other", effort="auto", prompt=SHORT)
    assert e.value.code == "router_no_route"


def test_history_corrects_repeated_prompts(router):
    pol = _policy(router, ())
    before = pol.decide(model=None, effort=0.5, prompt=SHORT).spend
    pol.history.record(BASE, SHORT, 200.0)
    after = pol.decide(model=None, effort=0.5, prompt=SHORT)
    assert after.predicted["source"] == "history" and after.full_effort_tokens == 200
    assert after.spend == 120 != before  # ceil(0.5 x 200 x 1.2)


def test_history_is_bounded_lru():
    h = History(capacity=3, alpha=0.5)
    for i in range(10):
        h.record("m", f"q{i}", i)
    assert len(h) == 3 and h.get("m", "q0") is None and h.get("m", "q9") == 9
    h.get("m", "q7")  # touch: q8 is now the oldest
    h.record("m", "new", 1)
    assert h.get("m", "q8") is None and h.get("m", "q7") == 7
    h.record("m", "q7", 9)
    assert h.get("m", "q7") == 8  # moving average
    assert h.get("other", "q7") is None  # keyed by model too
    off = History(capacity=0)
    off.record("m", "q", 1)
    assert len(off) == 0


def test_choose_is_cheapest_within_margin():
    p = {"a": 0.99, "b": 0.985, "c": 0.5}
    t = {"a": 100, "b": 40, "c": 1}
    assert choose(p, t, 0.0) == "a" and choose(p, t, 0.01) == "b" and choose(p, t, 0.6) == "c"


@pytest.mark.parametrize(
    "args,msg",
    [
        (["router", "fit"], "--records is required"),
        (["router", "fit", "--records", "/nonexistent.json"], "not found"),
        (["router", "fit", "--records", "README.md"], "not an `effort eval` results.json"),
        (["router", "calibrate", "--router", "/nonexistent", "--records", "README.md"], "no router"),
        (["router", "fit", "--records", "x.json", "--featuriser", "bert"], "unknown featuriser"),
    ],
)
def test_router_cli_errors(args, msg):
    r = subprocess.run([sys.executable, "-m", "effort_server.cli", *args], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr


# -- live: the shipped router in the real server ----------------------------------------------
def test_auto_on_the_live_server(client, server):
    """`auto` thinks less on easy prompts than on hard ones; the report shows the route and the
    prediction; the router metrics move; a repeated prompt is answered from the history."""
    import httpx
    from effort_server.training.tasks import DigitsTask
    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        out = {}
        for fam in text_string_to_metric_families(httpx.get(f"{server}/metrics").text):
            for s in fam.samples:
                out[s.name] = out.get(s.name, 0) + s.value
        return out

    probs = DigitsTask().problems("test", 120, seed=21)
    easy = [p.question for p in probs if p.difficulty <= 4][:6]
    hard = [p.question for p in probs if p.difficulty >= 14][:6]
    before = scrape()

    def run(q):
        r = client.chat.completions.create(
            model="effort-tiny",
            messages=[{"role": "user", "content": q}],
            temperature=0,
            extra_body={"effort": "auto"},
        )
        rep = r.model_extra["effort"]
        assert rep["route"] == "auto" and rep["requested"] == "auto" and rep["predicted"]["route"], rep
        assert r.choices[0].message.content, "auto must still answer"
        return r.usage.completion_tokens_details.reasoning_tokens, rep

    e = [run(q) for q in easy]
    h = [run(q) for q in hard]
    assert np.mean([t for t, _ in e]) < np.mean([t for t, _ in h])
    assert np.mean([r["predicted"]["full_effort_tokens"] for _, r in e]) < np.mean(
        [r["predicted"]["full_effort_tokens"] for _, r in h]
    )
    after = scrape()
    assert after["effort_router_decisions_total"] - before.get("effort_router_decisions_total", 0) == len(e) + len(h)
    assert after["effort_router_length_error_tokens_count"] > before.get("effort_router_length_error_tokens_count", 0)
    # the same prompt again: its measured length comes from the history (recorded when its route
    # ran at full effort; e1 below effort 1 sets its own length and measures no full-effort one)
    full = [q for q, (_, r) in zip(easy + hard, e + h) if r["predicted"]["route"].endswith("@1")]
    assert full, [r["predicted"]["route"] for _, r in e + h]
    _, again = run(full[0])
    assert again["predicted"]["source"] == "history", again
