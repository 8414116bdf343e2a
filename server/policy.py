"""The policy: request fields + model facts → one immutable `EffortDecision` (design §2).

Precedence for the effort: request `effort` → request `reasoning_effort` → server default.
Budget: effort 0 → 0 (answer at once); effort 1 → no effort budget; otherwise
``clamp(ceil(effort × L̂ × slack), min_budget, max_budget)`` with L̂ the predicted full-effort
reasoning length of the model that runs the request — the router's per-prompt prediction (a
measured length from the online history first, for a prompt seen before) when a router is
loaded and knows that model, else the model manifest's default. An adapter with an effort
control (e1: the effort written into its prompt, calibrated) sets its own length, so it gets
no effort budget for 0 < effort < 1, as at effort 1: ``effort × L̂ × slack`` cut 24–56% of
e1's own calibrated paths (500 test prompts at efforts 0.25 / 0.5 / 0.75: accuracy 66.8 / 80.4 /
64.6% against 99.4 / 98.0 / 90.8% with the control alone), and a backstop at one predicted
full-effort path, ``ceil(L̂ × slack)``, still cut the re-checked paths the stage-3 e1 mixes into
efforts 0.5 / 0.75 (91.2 / 79.2%, budget hit 12 / 29%; they realise up to 1.3 × full, and e1's
predicted full length is the router's weakest). Then, always:
the request's `thinking_token_budget` caps it, and so does `max_tokens` minus the answer
reserve (plus the two think markers), so reasoning never consumes the whole output limit.

`effort: "auto"`: the router scores every route it was fitted on that this server can run (a
model — the base or a registered adapter — at an effort); the policy takes the cheapest route
(fewest predicted reasoning tokens) whose predicted accuracy is within the margin of the best
(the margin calibrated offline by `effort router calibrate`, or the server's `router_margin`),
then budgets it like a numeric effort on that route's model. A request that names an adapter
restricts `auto` to that adapter's routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .config import OPENAI_EFFORTS, ServerSettings
from .errors import EffortError, ModelNotFound
from .registry import Adapter
from .router import BASE, History, Router, choose


def reasoning_cap(max_tokens: int, answer_reserve: int) -> int:
    """The most reasoning tokens a request with `max_tokens` may spend: the answer reserve and
    the two think markers stay out of reasoning."""
    return max(0, max_tokens - answer_reserve - 2)


@dataclass(frozen=True)
class EffortDecision:
    effort: float
    adapter: str | None
    thinking_budget: int | None
    control: str | None
    route: Literal["fixed", "auto"]
    predicted: dict[str, Any] | None
    reason: str
    requested: float | str | None = None
    full_effort_tokens: float | None = None

    @property
    def bucket(self) -> str:
        """Low-cardinality label for metrics."""
        e = self.effort
        return "none" if e == 0 else "low" if e <= 0.25 else "medium" if e <= 0.5 else "high" if e < 1 else "full"


class Policy:
    def __init__(self, settings: ServerSettings, adapters: dict[str, Adapter], base_name: str,
                 full_effort_tokens: int, router: Router | None = None, history: History | None = None):
        self.s, self.adapters, self.base_name = settings, adapters, base_name
        self.full_effort_tokens = full_effort_tokens
        self.router, self.history = router, history
        self.margin = None
        if router is not None:
            self.margin = settings.router_margin if settings.router_margin >= 0 else router.margin
            # routes this server can run: the base and registered adapters
            self.routes = [r for r in router.routes if r.model == BASE or r.model in adapters]
        self.rules = settings.effort_rules()
        missing = [a for _, a in self.rules if a not in adapters]
        if missing:
            raise ValueError(f"effort_adapters names unknown adapter(s): {', '.join(missing)}")

    # -- effort -----------------------------------------------------------------------------
    def _parse_effort(self, effort, reasoning_effort) -> tuple[float | str | None, float | None, str]:
        """(requested, number or None for auto, source)."""
        if effort is not None:
            if isinstance(effort, bool):
                raise EffortError("effort must be a number in [0, 1] or one of low, medium, high, auto", "effort")
            if isinstance(effort, (int, float)):
                if not (0 <= effort <= 1) or math.isnan(effort):
                    raise EffortError(f"effort {effort} is out of range: use a number in [0, 1]", "effort")
                return effort, float(effort), "effort"
            if effort == "auto":
                return effort, None, "effort"
            if effort in self.s.levels():
                return effort, self.s.levels()[effort], "effort"
            raise EffortError(f"unknown effort level {effort!r}: use a number in [0, 1], low, medium, high or auto", "effort")
        if reasoning_effort is not None:
            if reasoning_effort not in OPENAI_EFFORTS:
                raise EffortError(f"unknown reasoning_effort {reasoning_effort!r}: use one of {', '.join(OPENAI_EFFORTS)}",
                                  "reasoning_effort")
            return reasoning_effort, self.s.openai_levels()[reasoning_effort], "reasoning_effort"
        d = self.s.default_effort
        try:
            return None, float(d), "default"
        except ValueError:
            return None, {**self.s.levels(), "auto": None}.get(d, 1.0), "default"

    # -- adapter ----------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> Adapter | None:
        """The adapter a request's `model` names, None for the base model."""
        if not model or model == self.base_name:
            return None
        if model in self.adapters:
            return self.adapters[model]
        known = ", ".join([self.base_name, *self.adapters])
        raise ModelNotFound(f"model {model!r} not found; served models: {known}", "model")

    def _adapter_for(self, effort: float) -> Adapter | None:
        for max_effort, name in self.rules:
            if effort <= max_effort:
                return self.adapters[name]
        return None

    # -- decision ---------------------------------------------------------------------------
    def score(self, prompt: str):
        """The router's score for `prompt`, measured lengths from the history first."""
        known = {}
        if self.history is not None:
            for m in self.router.models:
                v = self.history.get(m, prompt)
                if v is not None:
                    known[m] = v
        return self.router.score(prompt, known), known

    def _auto(self, prompt: str | None, explicit: Adapter | None):
        if self.router is None:
            raise EffortError("effort 'auto' needs a fitted difficulty router and none is configured "
                              "(fit one with `effort router fit`, serve it with --router)", "effort",
                              code="router_not_configured")
        routes = [r for r in self.routes if explicit is None or r.model == explicit.name]
        if not routes:
            raise EffortError(f"the router has no routes for model {explicit.name!r}; use a numeric effort "
                              "or a model the router was fitted on", "effort", code="router_no_route")
        score, known = self.score(prompt or "")
        p = {r: score.p_correct[r] for r in routes}
        t = {r: score.tokens[r] for r in routes}
        route = choose(p, t, self.margin)
        predicted = {"route": route.label, "p_correct": round(p[route], 4), "best_p_correct": round(max(p.values()), 4),
                     "tokens": round(t[route], 1), "full_effort_tokens": round(score.full_length[route.model], 1),
                     "margin": self.margin, "source": "history" if route.model in known else "router"}
        return route, score, predicted

    def decide(self, *, model: str | None, effort=None, reasoning_effort=None,
               thinking_token_budget: int | None = None, max_tokens: int | None = None,
               prompt: str | None = None) -> EffortDecision:
        requested, value, source = self._parse_effort(effort, reasoning_effort)
        explicit = self.resolve_model(model)
        predicted, route_kind, score, known = None, "fixed", None, {}
        if value is None:  # auto
            route, score, predicted = self._auto(prompt, explicit)
            value, route_kind = route.effort, "auto"
            adapter = None if route.model == BASE else self.adapters[route.model]
        else:
            adapter = explicit or self._adapter_for(value)
        full, base_full = float(self.full_effort_tokens), float(self.full_effort_tokens)
        if self.router is not None and prompt is not None:
            key = adapter.name if adapter is not None else BASE
            if score is None:
                score, known = self.score(prompt)
            if key in score.full_length:
                full = score.full_length[key]
                if predicted is None:
                    predicted = {"full_effort_tokens": round(full, 1), "source": "history" if key in known else "router"}
            base_full = score.full_length.get(BASE, base_full)
        why = [f"{source}={requested if requested is not None else self.s.default_effort}->"
               + (f"auto: route {predicted['route']} (p={predicted['p_correct']:.3f}, best {predicted['best_p_correct']:.3f}, "
                  f"margin {self.margin:g})" if route_kind == "auto" else f"{value:g}")]
        control = adapter.manifest.control.kind if adapter is not None else None
        control = None if control == "none" else control
        if value <= 0:
            budget: int | None = 0
            why.append("no thinking")
        elif value >= 1:
            budget = None
            why.append("full effort: no effort budget")
        elif control is not None:
            budget = None
            why.append(f"{adapter.name} sets its own length from the effort in its prompt: no effort budget")
        else:
            raw = math.ceil(value * full * self.s.budget_slack)
            budget = max(self.s.min_budget, raw)
            why.append(f"budget=ceil({value:g}x{full:.1f}x{self.s.budget_slack:g})={raw}")
        if self.s.max_budget and (budget is None or budget > self.s.max_budget):
            budget = self.s.max_budget
            why.append(f"server max_budget {budget}")
        if thinking_token_budget is not None and (budget is None or thinking_token_budget < budget):
            budget = thinking_token_budget
            why.append(f"request thinking_token_budget {budget}")
        if max_tokens is not None:
            cap = reasoning_cap(max_tokens, self.s.answer_reserve)
            if budget is None or budget > cap:
                budget = cap
                why.append(f"output limit {max_tokens} - answer reserve {self.s.answer_reserve} - 2 markers -> {cap}")
        if adapter is not None:
            why.append(f"adapter {adapter.name}" + (" (requested)" if explicit else " (router)" if route_kind == "auto"
                                                    else " (effort rule)"))
        return EffortDecision(effort=value, adapter=adapter.name if adapter else None, thinking_budget=budget,
                              control=control, route=route_kind, predicted=predicted, reason="; ".join(why),
                              requested=requested, full_effort_tokens=base_full)
