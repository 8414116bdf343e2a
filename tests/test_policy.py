"""Policy decisions, table-driven: effort names and aliases, the spend, the option chosen (fit,
ties, named adapters, rules, no router), budgets and caps, errors."""

from pathlib import Path

import pytest
from effort_server.server.config import ServerSettings
from effort_server.server.errors import EffortError, ModelNotFound
from effort_server.server.policy import Policy
from effort_server.server.registry import Adapter

from effort_server.contract.manifest import AdapterManifest, Control, ModelManifest


def _adapter(name, kind="dler", control=None, evaluation=None):
    m = AdapterManifest(
        name=name, kind=kind, base_model="x", control=control or Control(), evaluation=evaluation or {}
    )
    return Adapter(name, Path("/nonexistent") / name, m, lora_id=1)


def _acc(a, t):
    return {"accuracy": a, "mean_reasoning": t}


# the base thinks 100 tokens at full effort (100% right), 30% right cut to a quarter, 10% without
BASE = ModelManifest(
    name="tiny",
    default_full_effort_tokens=100,
    evaluation={"by_bucket": {"all": {**_acc(1.0, 100), "accuracy_cut_25": 0.3, "accuracy_no_thinking": 0.1}}},
)
E1 = Control(kind="prompt-prefix", template="effort {effort}\n{prompt}")
ADAPTERS = {
    "short": _adapter("short", evaluation={"full": {"all": _acc(0.99, 30)}}),  # DLER-like: 30% of the base
    "e1": _adapter(
        "e1",
        "e1",
        E1,
        {"efforts": {"0.25": _acc(0.9, 25), "0.5": _acc(0.95, 50), "0.75": _acc(0.97, 75), "1.0": _acc(0.98, 100)}},
    ),
    "raw": _adapter("raw"),  # never measured
}


def policy(**kw):
    return Policy(ServerSettings(**kw), ADAPTERS, "tiny", 100, base_manifest=BASE)


# full 100, slack 1.2, min_budget 16: spend S = max(16, ceil(e x 100 x 1.2))
@pytest.mark.parametrize(
    "model,kw,choice,budget,spend",
    [
        (None, dict(), "base", None, 120),  # default high: the base is the most accurate
        (None, dict(effort=1.0), "base", None, 120),
        (None, dict(effort="medium"), "short", 240, 60),  # short fits 60 at 99%: backstop one base path
        (None, dict(effort="low"), "short", 240, 30),  # 30 <= 30 still fits
        (None, dict(effort=0.2), "base@none", 0, 24),  # nothing accurate fits; a cut at 0.2 is predicted as none
        (None, dict(effort=0), "base@none", 0, 0),
        ("short", dict(effort=0.5), "short", 240, 60),  # a named adapter keeps to its own options
        ("short", dict(effort=0.2), "short@budget", 24, 24),  # ... unmeasured there: itself under the spend
        ("short", dict(effort=0), "short@none", 0, 0),
        ("raw", dict(effort=0.5), "raw@budget", 60, 60),  # never measured: plain budget forcing
        ("raw", dict(effort=1.0), "raw", None, 120),
        ("e1", dict(effort=0.5), "e1@0.5", 240, 60),  # the most accurate measured control that fits
        ("e1", dict(effort=0.6), "e1@0.5", 240, 72),  # 0.75 (75 tokens) does not fit 72: no interpolation
        ("e1", dict(effort=1.0), "e1", None, 120),
        ("e1", dict(effort=0), "e1@none", 0, 0),
        ("tiny", dict(effort="low"), "short", 240, 30),  # the base's name is not a restriction
        (None, dict(effort="low", adapters="none"), "base@budget", 30, 30),  # ... `adapters: none` is
        (None, dict(effort=1.0, adapters="none"), "base", None, 120),
        (None, dict(effort="low", adapters="auto"), "short", 240, 30),
    ],
    ids=lambda v: str(v),
)
def test_choice_and_budget(model, kw, choice, budget, spend):
    d = policy().decide(model=model, **kw)
    assert (d.choice, d.thinking_budget, d.spend) == (choice, budget, spend), d.reason
    assert d.route == "fixed" and d.full_effort_tokens == 100 and d.predicted["source"] == "manifest"


def test_control_value_goes_into_the_prompt():
    d = policy().decide(model="e1", effort=0.5)
    assert d.control == "prompt-prefix" and d.control_effort == 0.5 and d.adapter == "e1"
    assert policy().decide(model="e1", effort=1.0).control_effort == 1.0
    assert policy().decide(model="short", effort=0.5).control is None


@pytest.mark.parametrize(
    "settings,kw,choice,budget",
    [
        (dict(effort_tie=0.02), dict(effort=1.0), "short", None),  # 99% is tied with 100% at 0.02: fewer tokens
        (dict(effort_adapters='[[1, "base"]]'), dict(effort=0.5), "base@budget", 60),  # pinned: plain budget forcing
        (dict(effort_adapters='[[0.5, "base"]]'), dict(effort=1.0), "base", None),  # the rule ends at 0.5
        (dict(effort_adapters='[[0.5, "e1"]]'), dict(effort=0.5), "e1@0.5", 240),
        (dict(effort_adapters='[[1, "tiny"]]'), dict(effort="low"), "base@budget", 30),  # the base's served name
        (dict(min_budget=40), dict(effort=0.2), "short", 240),  # the floor: spend 40, so short fits
        (dict(budget_slack=1.0), dict(effort=0.25), "e1@0.25", 200),  # spend 25: short (30) no longer fits
        (dict(max_budget=20), dict(effort=1.0), "base", 20),
        (dict(default_effort="low"), dict(), "short", 240),
        (dict(default_effort="0.5"), dict(), "short", 240),
        (dict(effort_low=0.5), dict(effort="low"), "short", 240),
        (dict(effort_high=0.5), dict(effort="high"), "short", 240),
        (dict(effort_high=0.5), dict(effort="xhigh"), "base", None),  # xhigh and max stay 1 unless set
        (dict(effort_high=0.5, effort_max=0.5), dict(reasoning_effort="max"), "short", 240),
    ],
)
def test_settings_change_the_choice(settings, kw, choice, budget):
    d = policy(**settings).decide(model=None, **kw)
    assert (d.choice, d.thinking_budget) == (choice, budget), d.reason


@pytest.mark.parametrize(
    "kw,budget",
    [
        (dict(effort=1.0, thinking_token_budget=7), 7),  # the request's budget is always honoured
        (dict(effort="low", thinking_token_budget=500), 240),  # ... but only caps
        (dict(effort=1.0, reasoning={"max_tokens": 9}), 9),  # OpenRouter's name for it
        (dict(effort=1.0, thinking_token_budget=7, reasoning={"max_tokens": 9}), 7),  # the smaller of the two
        (dict(effort=1.0, max_tokens=40), 22),  # 40 - reserve 16 - 2 markers
        (dict(effort=1.0, max_tokens=10), 0),  # tiny limit: answer only
        (dict(effort="low", max_tokens=1000), 240),
    ],
)
def test_caps(kw, budget):
    assert policy().decide(model=None, **kw).thinking_budget == budget


@pytest.mark.parametrize(
    "kw,effort,requested",
    [
        (dict(effort=0.25), 0.25, 0.25),
        (dict(effort="medium"), 0.5, "medium"),
        (dict(effort="minimal"), 0.1, "minimal"),  # every name works in `effort` too
        (dict(reasoning_effort="none"), 0.0, "none"),
        (dict(reasoning_effort="minimal"), 0.1, "minimal"),
        (dict(reasoning_effort="xhigh"), 1.0, "xhigh"),
        (dict(reasoning_effort="max"), 1.0, "max"),
        (dict(effort="low", reasoning_effort="high"), 0.25, "low"),  # effort wins
        (dict(reasoning={"effort": "low"}), 0.25, "low"),  # OpenRouter
        (dict(reasoning={"effort": "none"}), 0.0, "none"),
        (dict(reasoning_effort="medium", reasoning={"effort": "low"}), 0.5, "medium"),  # reasoning_effort wins
        (dict(reasoning={"enabled": False}), 0.0, False),  # thinking off
        (dict(reasoning={"enabled": True}), 1.0, None),  # on: the server default
        (dict(reasoning={"max_tokens": 50}), 1.0, None),
        (dict(enable_thinking=False), 0.0, False),  # chat_template_kwargs.enable_thinking
        (dict(enable_thinking=True), 1.0, None),
        (dict(enable_thinking=False, effort=0), 0.0, 0),  # agreeing fields
        (dict(enable_thinking=False, reasoning_effort="none"), 0.0, "none"),
    ],
    ids=lambda v: str(v),
)
def test_effort_names_and_aliases(kw, effort, requested):
    d = policy().decide(model=None, **kw)
    assert d.effort == effort and d.requested == requested, d.reason
    if effort == 0:
        assert d.thinking_budget == 0 and d.choice == "base@none"


@pytest.mark.parametrize(
    "kw,param,code,fragment",
    [
        (dict(effort=1.5), "effort", "invalid_effort", "out of range"),
        (dict(effort=-0.1), "effort", "invalid_effort", "out of range"),
        (dict(effort=float("nan")), "effort", "invalid_effort", "out of range"),
        (dict(effort="turbo"), "effort", "invalid_effort", "unknown effort level"),
        (dict(effort=True), "effort", "invalid_effort", "number in [0, 1]"),
        (dict(reasoning_effort="turbo"), "reasoning_effort", "invalid_effort", "unknown reasoning_effort"),
        (dict(reasoning_effort="auto"), "reasoning_effort", "invalid_effort", "unknown reasoning_effort"),
        (dict(reasoning={"effort": "turbo"}), "reasoning.effort", "invalid_effort", "unknown reasoning.effort"),
        (
            dict(reasoning={"enabled": False, "effort": "high"}),
            "reasoning.enabled",
            "conflicting_effort",
            "no thinking",
        ),
        (
            dict(enable_thinking=False, effort=0.5),
            "chat_template_kwargs.enable_thinking",
            "conflicting_effort",
            "no thinking",
        ),
        (
            dict(enable_thinking=False, effort="auto"),
            "chat_template_kwargs.enable_thinking",
            "conflicting_effort",
            "no thinking",
        ),
        (dict(effort="auto"), "effort", "router_not_configured", "router"),
        (dict(model="short", adapters="none"), "adapters", "conflicting_effort", "base model alone"),
    ],
)
def test_bad_effort(kw, param, code, fragment):
    with pytest.raises(EffortError) as e:
        policy().decide(**{"model": None, **kw})
    assert (e.value.param, e.value.code, e.value.status) == (param, code, 400) and fragment in e.value.message


@pytest.mark.parametrize("model", ["ghost", "../adapters/dler", "/etc/passwd", "dler%2F..", "tiny "])
def test_unknown_model_is_404(model):
    with pytest.raises(ModelNotFound) as e:
        policy().decide(model=model)
    assert e.value.status == 404 and e.value.param == "model"


def test_rules_naming_unknown_adapters_fail_at_start():
    with pytest.raises(ValueError, match="unknown adapter"):
        policy(effort_adapters='[[0.5, "ghost"]]')


def test_a_bare_model_is_budget_forced():
    """No measurements anywhere (a user's model without our manifest): numeric efforts are plain
    budget forcing on the base, as a budget from the default length."""
    p = Policy(ServerSettings(), {}, "m", 200)
    assert [(d.choice, d.thinking_budget) for d in (p.decide(model=None, effort=e) for e in (0, 0.25, 0.5, 1))] == [
        ("base@none", 0),
        ("base@budget", 60),
        ("base@budget", 120),
        ("base", None),
    ]


@pytest.mark.parametrize(
    "e,bucket", [(0, "none"), (0.2, "low"), (0.25, "low"), (0.5, "medium"), (0.75, "high"), (1, "full")]
)
def test_bucket(e, bucket):
    assert policy().decide(model=None, effort=e).bucket == bucket


def test_decision_is_immutable_and_says_why():
    d = policy().decide(model=None, effort=0.5)
    assert "spend=max(16, ceil(0.5x100.0x1.2))=60" in d.reason and "short" in d.reason
    assert d.predicted["route"] == "short" and d.predicted["p_correct"] == 0.99 and d.family == "short"
    with pytest.raises(AttributeError):
        d.effort = 0.3
