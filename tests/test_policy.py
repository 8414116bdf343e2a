"""Policy decisions, table-driven: effort parsing, budgets, caps, reserve, adapters."""

from pathlib import Path

import pytest

from server.config import ServerSettings
from server.errors import EffortError, ModelNotFound
from server.manifest import AdapterManifest, Control
from server.policy import Policy
from server.registry import Adapter


def _adapter(name, kind="dler", control=None):
    m = AdapterManifest(name=name, kind=kind, base_model="x", control=control or Control())
    return Adapter(name, Path("/nonexistent") / name, m, lora_id=1)


ADAPTERS = {"dler": _adapter("dler"), "e1": _adapter("e1", "e1", Control(kind="prompt-prefix",
                                                                         template="effort {effort}\n{prompt}"))}


def policy(**kw):
    return Policy(ServerSettings(**kw), ADAPTERS, "tiny", full_effort_tokens=100)


@pytest.mark.parametrize("kw,effort,budget", [
    (dict(), 1.0, None),                                        # server default: high = full
    (dict(effort=1.0), 1.0, None),
    (dict(effort="high"), 1.0, None),
    (dict(effort="medium"), 0.5, 60),                           # ceil(0.5 x 100 x 1.2)
    (dict(effort="low"), 0.25, 30),
    (dict(effort=0.1), 0.1, 12),
    (dict(effort=0.01), 0.01, 8),                               # min_budget
    (dict(effort=0), 0.0, 0),
    (dict(reasoning_effort="none"), 0.0, 0),
    (dict(reasoning_effort="minimal"), 0.1, 12),
    (dict(reasoning_effort="low"), 0.25, 30),
    (dict(reasoning_effort="xhigh"), 1.0, None),
    (dict(effort="low", reasoning_effort="high"), 0.25, 30),    # effort wins
    (dict(effort=1.0, thinking_token_budget=7), 1.0, 7),        # request budget always honoured
    (dict(effort="low", thinking_token_budget=50), 0.25, 30),   # ... but only caps
    (dict(effort=1.0, max_tokens=40), 1.0, 22),                 # 40 - reserve 16 - 2 markers
    (dict(effort=1.0, max_tokens=10), 1.0, 0),                  # tiny limit: answer only
    (dict(effort="low", max_tokens=1000), 0.25, 30),
], ids=lambda v: str(v))
def test_decide_effort_and_budget(kw, effort, budget):
    d = policy().decide(model=None, **kw)
    assert d.effort == effort and d.thinking_budget == budget, d.reason
    assert d.route == "fixed" and d.reason


@pytest.mark.parametrize("kw,budget", [
    (dict(effort="low"), None),                                 # its own length, not 30
    (dict(effort=0.75), None),
    (dict(effort=0.01), None),
    (dict(effort=1.0), None),
    (dict(effort=0), 0),
    (dict(effort="low", thinking_token_budget=50), 50),         # the request's budget still caps
    (dict(effort="low", max_tokens=40), 22),                    # ... and so does the answer reserve
])
def test_adapter_with_effort_control_gets_no_effort_budget(kw, budget):
    """e1 reads the effort from its prompt: an effort-scaled budget would cut its own paths; the
    request's budget, the server's max_budget and the answer reserve still cap it."""
    d = policy().decide(model="e1", **kw)
    assert d.thinking_budget == budget and d.control == "prompt-prefix", d.reason
    assert policy().decide(model="dler", effort="low").thinking_budget == 30  # no control: effort budget
    assert policy(max_budget=20).decide(model="e1", effort="low").thinking_budget == 20  # the server's cap holds


@pytest.mark.parametrize("settings,kw,budget", [
    (dict(max_budget=20), dict(effort=1.0), 20),
    (dict(max_budget=20), dict(effort="medium"), 20),
    (dict(budget_slack=1.0), dict(effort="medium"), 50),
    (dict(min_budget=40), dict(effort=0.1), 40),
    (dict(answer_reserve=0), dict(effort=1.0, max_tokens=40), 38),
    (dict(default_effort="low"), dict(), 30),
    (dict(default_effort="0.5"), dict(), 60),
    (dict(effort_low=0.1), dict(effort="low"), 12),
])
def test_settings_change_budgets(settings, kw, budget):
    assert policy(**settings).decide(model=None, **kw).thinking_budget == budget


@pytest.mark.parametrize("kw,param,fragment", [
    (dict(effort=1.5), "effort", "out of range"),
    (dict(effort=-0.1), "effort", "out of range"),
    (dict(effort="turbo"), "effort", "unknown effort level"),
    (dict(effort=True), "effort", "number in [0, 1]"),
    (dict(reasoning_effort="max"), "reasoning_effort", "unknown reasoning_effort"),
    (dict(effort="auto"), "effort", "router"),
])
def test_bad_effort(kw, param, fragment):
    with pytest.raises(EffortError) as e:
        policy().decide(model=None, **kw)
    assert e.value.param == param and fragment in e.value.message and e.value.status == 400


def test_auto_without_router_has_its_own_code():
    with pytest.raises(EffortError) as e:
        policy().decide(model=None, effort="auto")
    assert e.value.code == "router_not_configured"


@pytest.mark.parametrize("model", ["ghost", "../adapters/dler", "/etc/passwd", "dler%2F..", "tiny "])
def test_unknown_model_is_404(model):
    with pytest.raises(ModelNotFound) as e:
        policy().decide(model=model)
    assert e.value.status == 404 and e.value.param == "model"


def test_adapter_by_name_and_by_rule():
    assert policy().decide(model="dler").adapter == "dler"
    assert policy().decide(model="tiny").adapter is None
    p = policy(effort_adapters='[[0.5, "dler"]]')
    assert p.decide(model=None, effort="low").adapter == "dler"
    assert p.decide(model=None, effort="high").adapter is None
    assert p.decide(model="e1", effort="low").adapter == "e1"  # explicit name wins over rules
    assert p.decide(model="e1", effort="low").control == "prompt-prefix"


def test_rules_naming_unknown_adapters_fail_at_start():
    with pytest.raises(ValueError, match="unknown adapter"):
        policy(effort_adapters='[[0.5, "ghost"]]')


@pytest.mark.parametrize("e,bucket", [(0, "none"), (0.2, "low"), (0.25, "low"), (0.5, "medium"), (0.75, "high"), (1, "full")])
def test_bucket(e, bucket):
    assert policy().decide(model=None, effort=e).bucket == bucket


def test_decision_is_immutable():
    d = policy().decide(model=None)
    with pytest.raises(AttributeError):
        d.effort = 0.3
