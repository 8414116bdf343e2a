"""The policy: request fields + predictions → one immutable `EffortDecision` (design §2).

The effort comes from the first of `effort` → `reasoning_effort` → `reasoning.effort` → a switch
turning thinking off (effort 0) → the server default; a value that cannot be honoured is a 400
naming its field. Effort e means: spend at most about e × the *base* model's full-effort
reasoning L̂ for this prompt, as accurately as that allows. The spend is
``S = max(min_budget, ceil(e × L̂ × slack))``; of the options the request may use (`server.routes`:
a model at full length, e1 at a measured control, a model under budget S, no thinking), the
most accurate whose predicted reasoning fits S is chosen, ties within `effort_tie` going to fewer
tokens. The thinking budget is the backstop (S for a cut, else a runaway guard; none at effort 1),
capped by the request's budgets and by `max_tokens` minus the answer reserve. `auto` is the
router's cheapest route within its margin of the best. docs/effort.md states the whole rule and
why each part is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ..contract.manifest import ModelManifest
from ..contract.scoring import BASE, Route, Router, choose
from .config import OPENAI_EFFORTS, ServerSettings
from .errors import EffortError, ModelNotFound
from .registry import Adapter
from .routes import UNMEASURED, History, Option, Predictor


def reasoning_cap(max_tokens: int, answer_reserve: int) -> int:
    """The most reasoning tokens a request with `max_tokens` may spend: the answer reserve and
    the two think markers stay out of reasoning."""
    return max(0, max_tokens - answer_reserve - 2)


@dataclass(frozen=True)
class EffortDecision:
    effort: float
    adapter: str | None
    thinking_budget: int | None
    control: str | None  # the adapter's control kind, when the effort goes into its prompt
    route: Literal["fixed", "auto"]
    predicted: dict[str, Any] | None
    reason: str
    requested: float | str | None = None
    full_effort_tokens: float | None = None  # the base's predicted full-effort reasoning (L̂)
    choice: str = ""  # the option run: dler, e1@0.62, base@budget, base@none
    family: str = ""  # the option's metrics label
    spend: int | None = None  # reasoning tokens the effort allows (S); None for auto
    control_effort: float = 1.0  # the effort written into the prompt of an adapter with a control

    @property
    def bucket(self) -> str:
        """Low-cardinality label for metrics."""
        e = self.effort
        return "none" if e == 0 else "low" if e <= 0.25 else "medium" if e <= 0.5 else "high" if e < 1 else "full"


class Policy:
    def __init__(
        self,
        settings: ServerSettings,
        adapters: dict[str, Adapter],
        base_name: str,
        full_effort_tokens: int,
        router: Router | None = None,
        history: History | None = None,
        base_manifest: ModelManifest | None = None,
        full_source: str = "manifest",
    ):
        self.s, self.adapters, self.base_name = settings, adapters, base_name
        self.full_effort_tokens = full_effort_tokens
        self.router, self.history = router, history
        self.predictor = Predictor(adapters, full_effort_tokens, base_manifest, router, history, full_source)
        self.margin = None
        if router is not None:
            self.margin = settings.router_margin if settings.router_margin >= 0 else router.margin
            # routes this server can run: the base and registered adapters
            self.routes = [r for r in router.routes if r.model == BASE or r.model in adapters]
        self.rules = [(e, BASE if a in ("base", base_name) else a) for e, a in settings.effort_rules()]
        missing = [a for _, a in self.rules if a != BASE and a not in adapters]
        if missing:
            raise ValueError(f"effort_adapters names unknown adapter(s): {', '.join(missing)}")

    # -- effort -----------------------------------------------------------------------------
    def _named(self, value, param: str, allow_auto: bool) -> float | None:
        levels = self.s.levels()
        if isinstance(value, str) and (value in levels or (allow_auto and value == "auto")):
            return None if value == "auto" else levels[value]
        names = ", ".join(OPENAI_EFFORTS) + (" or auto" if allow_auto else "")
        if param == "effort":
            raise EffortError(f"unknown effort level {value!r}: use a number in [0, 1] or one of {names}", param)
        raise EffortError(f"unknown {param} {value!r}: use one of {names}", param)

    def _parse_effort(self, effort, reasoning_effort, reasoning, enable_thinking):
        """(requested, number or None for auto, the field it came from)."""
        off = None  # the field that switched thinking off, if any
        if reasoning is not None and reasoning.get("enabled") is False:
            off = "reasoning.enabled"
        elif enable_thinking is False:
            off = "chat_template_kwargs.enable_thinking"
        requested, value, source = None, None, None
        if effort is not None:
            if isinstance(effort, bool):
                raise EffortError("effort must be a number in [0, 1] or an effort name", "effort")
            if isinstance(effort, (int, float)):
                if math.isnan(effort) or not 0 <= effort <= 1:
                    raise EffortError(f"effort {effort} is out of range: use a number in [0, 1]", "effort")
                requested, value, source = effort, float(effort), "effort"
            else:
                requested, value, source = effort, self._named(effort, "effort", True), "effort"
        elif reasoning_effort is not None:
            requested, source = reasoning_effort, "reasoning_effort"
            value = self._named(reasoning_effort, source, False)
        elif reasoning is not None and reasoning.get("effort") is not None:
            requested, source = reasoning["effort"], "reasoning.effort"
            value = self._named(requested, source, False)
        if source is not None:
            if off is not None and (value is None or value > 0):
                raise EffortError(
                    f"{off} is false (no thinking) but {source} asks for {requested!r}; send one of them",
                    off,
                    code="conflicting_effort",
                )
            return requested, value, source
        if off is not None:
            return False, 0.0, off
        d = self.s.default_effort
        try:
            return None, float(d), "default"
        except ValueError:
            return None, {**self.s.levels(), "auto": None}.get(d, 1.0), "default"

    # -- models -----------------------------------------------------------------------------
    def resolve_model(self, model: str | None) -> Adapter | None:
        """The adapter a request's `model` names, None for the base model."""
        if not model or model == self.base_name:
            return None
        if model in self.adapters:
            return self.adapters[model]
        known = ", ".join([self.base_name, *self.adapters])
        raise ModelNotFound(f"model {model!r} not found; served models: {known}", "model")

    def _models(self, explicit: Adapter | None, effort: float, adapters: str | None) -> tuple[list[str], str]:
        """The models whose options a request may use (the request's own first), and why."""
        if explicit is not None:
            return [explicit.name], f"model {explicit.name} (requested)"
        if adapters == "none":
            return [BASE], "the base alone (adapters: none)"
        for max_effort, name in self.rules:
            if effort <= max_effort:
                return [name], f"model {name} (effort rule <= {max_effort:g})"
        pred = self.predictor
        models = [BASE, *self.adapters]
        if pred.routed:  # with a router: the models it was fitted on
            models = [m for m in models if m in pred.routed]
        return models, "any served model"

    # -- decision ---------------------------------------------------------------------------
    def decide(
        self,
        *,
        model: str | None,
        effort=None,
        reasoning_effort=None,
        thinking_token_budget: int | None = None,
        max_tokens: int | None = None,
        prompt: str | None = None,
        reasoning: dict | None = None,
        enable_thinking: bool | None = None,
        adapters: str | None = None,
    ) -> EffortDecision:
        """`reasoning`: OpenRouter's object (effort, max_tokens, enabled; exclude is the
        service's); `enable_thinking`: the chat template switch from `chat_template_kwargs`;
        `adapters`: "none" keeps a request on the base's name to the base alone."""
        requested, value, source = self._parse_effort(effort, reasoning_effort, reasoning, enable_thinking)
        explicit = self.resolve_model(model)
        if adapters == "none" and explicit is not None:
            raise EffortError(
                f"adapters 'none' asks for the base model alone, but model names the adapter "
                f"{explicit.name!r}; send one of them",
                "adapters",
                code="conflicting_effort",
            )
        score, known = self.predictor.score(prompt)
        base_full, src = self.predictor.base_full(score, prompt)
        why = [f"{source}={requested if requested is not None else self.s.default_effort}"]
        if src == UNMEASURED:
            why.append(f"the base's full-effort length {base_full:g} is an unmeasured default (run effort profile)")
        if value is None:
            option, predicted, budget, spend = self._auto(explicit, score, known, why, adapters == "none")
            value, kind = option.value, "auto"
        else:
            option, predicted, budget, spend = self._fixed(value, explicit, score, base_full, why, adapters)
            predicted["full_effort_tokens"], predicted["source"] = round(base_full, 1), src
            kind = "fixed"
        caps = [(self.s.max_budget or None, f"server max_budget {self.s.max_budget}")]
        caps += [
            (b, f"request {f} {b}")
            for b, f in (
                (thinking_token_budget, "thinking_token_budget"),
                ((reasoning or {}).get("max_tokens"), "reasoning.max_tokens"),
            )
        ]
        if max_tokens is not None:
            cap = reasoning_cap(max_tokens, self.s.answer_reserve)
            caps.append(
                (cap, f"output limit {max_tokens} - answer reserve {self.s.answer_reserve} - 2 markers -> {cap}")
            )
        for cap, note in caps:
            if cap is not None and (budget is None or cap < budget):
                budget = cap
                why.append(note)
        adapter = None if option.model == BASE else self.adapters[option.model]
        control = adapter.manifest.control.kind if adapter is not None else None
        control = None if control == "none" else control
        return EffortDecision(
            effort=value,
            adapter=None if adapter is None else adapter.name,
            thinking_budget=budget,
            control=control,
            route=kind,
            predicted=predicted,
            reason="; ".join(why),
            requested=requested,
            full_effort_tokens=base_full,
            choice=option.label,
            family=option.family,
            spend=spend,
            control_effort=option.value if option.kind == "control" else 1.0,
        )

    def _fixed(
        self, e: float, explicit: Adapter | None, score, base_full: float, why: list[str], adapters: str | None = None
    ):
        """A numeric effort: the most accurate option that fits the spend (module docstring)."""
        s = self.s
        models, scope = self._models(explicit, e, adapters)
        spend = 0 if e <= 0 else max(s.min_budget, math.ceil(e * base_full * s.budget_slack))
        fit_spend = math.ceil(base_full * s.budget_slack) if e >= 1 else spend
        options: list[Option] = []
        for m in models:
            prof = self.predictor.profile(m, score, base_full)
            options += prof.options(m, None if e >= 1 else spend, s.budget_slack, self.predictor.is_control(m))
        err = self.predictor.length_error if score is not None else 0.0
        fits = [o for o in options if o.tokens <= fit_spend + 1e-9]
        near = [
            o
            for o in options
            if not o.scaled and o.p is not None and fit_spend < o.tokens <= fit_spend * (1 + err) + 1e-9
        ]
        measured = [o for o in fits if o.p is not None]
        o = None
        if e <= 0:  # no thinking, on the request's own model
            o = next(x for x in options if x.model == models[0] and x.kind == "none")
            how = "no thinking"
        elif measured or near:
            inside = max((x.p for x in measured), default=-1.0)
            worth = [x for x in near if x.p > inside + (self.margin if self.margin is not None else s.effort_tie)]
            pool = measured + worth
            o = choose({x: x.p for x in pool}, {x: x.tokens for x in pool}, s.effort_tie)
            how = f"most accurate of {len(pool)} fitting options (tie {s.effort_tie:g})"
            if o in worth:
                how += f"; over the spend within the router's length error ({err:.0%}), for more accuracy"
        if o is None:
            # nothing measured fits: the request's own model under the spend
            kinds = ("full",) if e >= 1 else ("cut", "control", "full")
            o = next(x for k in kinds for x in options if x.model == models[0] and x.kind == k)
            how = "no measured option fits: the request's model under the spend"
        best = max((x.p for x in options if x.p is not None), default=None)
        if o.kind in ("cut", "none"):
            budget, note = o.budget, f"budget = spend {o.budget}" if o.kind == "cut" else "budget 0"
        elif e >= 1:
            budget, note = None, "full effort: no budget"
        else:
            budget = max(spend, math.ceil(2 * base_full * s.budget_slack), math.ceil(2 * o.tokens))
            note = f"backstop {budget} (two full base paths, or twice the option's tokens)"
        why.append(
            f"spend=max({s.min_budget}, ceil({e:g}x{base_full:.1f}x{s.budget_slack:g}))={spend}"
            if e > 0
            else "spend=0"
        )
        why.append(
            f"{scope}; {how}: {o.label} (p={'?' if o.p is None else f'{o.p:.3f}'}, {o.tokens:.1f} tokens); {note}"
        )
        predicted = {
            "route": o.label,
            "p_correct": None if o.p is None else round(o.p, 4),
            "best_p_correct": None if best is None else round(best, 4),
            "tokens": round(o.tokens, 1),
            "options": len(options),
            "fitting": len(fits),
        }
        return o, predicted, budget, spend

    def _auto(self, explicit: Adapter | None, score, known, why: list[str], base_only: bool = False):
        if self.router is None:
            raise EffortError(
                "effort 'auto' needs a fitted difficulty router and none is configured "
                "(fit one with `effort router fit`, serve it with --router)",
                "effort",
                code="router_not_configured",
            )
        routes = [
            r
            for r in self.routes
            if (r.model == explicit.name if explicit is not None else r.model == BASE if base_only else True)
        ]
        if not routes or score is None:
            if not routes:
                raise EffortError(
                    f"the router has no routes for model {explicit.name!r}; use a numeric effort "
                    "or a model the router was fitted on",
                    "effort",
                    code="router_no_route",
                )
            score, known = self.router.score(""), {}
        p = {r: score.p_correct[r] for r in routes}
        t = {r: score.tokens[r] for r in routes}
        route = choose(p, t, self.margin)
        full = score.full_length[route.model]
        predicted = {
            "route": route.label,
            "p_correct": round(p[route], 4),
            "best_p_correct": round(max(p.values()), 4),
            "tokens": round(t[route], 1),
            "full_effort_tokens": round(full, 1),
            "margin": self.margin,
            "source": "history" if route.model in known else "router",
        }
        why.append(f"auto: route {route.label} (p={p[route]:.3f}, best {max(p.values()):.3f}, margin {self.margin:g})")
        option, budget = self._route_option(route, full, t[route], p[route])
        if budget is not None:
            why.append(
                f"budget=max({self.s.min_budget}, ceil({route.effort:g}x{full:.1f}x{self.s.budget_slack:g}))={budget}"
            )
        return option, predicted, budget, None

    def decide_route(
        self, model: str | None, effort: float, *, prompt: str | None = None, max_tokens: int | None = None
    ) -> EffortDecision:
        """One router route as the server runs it (under `auto`): `model` (None: the base) at
        `effort` of its own predicted full length — a budget for a model without a control, the
        control value for e1. What `effort eval`'s ``route:E`` measures and the router is fitted on."""
        explicit = self.resolve_model(model)
        name = BASE if explicit is None else explicit.name
        score, _ = self.predictor.score(prompt)
        base_full, _ = self.predictor.base_full(score, prompt)
        full = (
            score.full_length[name]
            if score is not None and name in score.full_length
            else self.predictor.profile(name, None, base_full).full_length
        )
        option, budget = self._route_option(Route(name, float(effort)), full, 0.0, 0.0)
        if max_tokens is not None:
            cap = reasoning_cap(max_tokens, self.s.answer_reserve)
            budget = cap if budget is None else min(budget, cap)
        return EffortDecision(
            effort=float(effort),
            adapter=explicit.name if explicit else None,
            thinking_budget=budget,
            control=explicit.manifest.control.kind if explicit and option.kind == "control" else None,
            route="fixed",
            predicted=None,
            reason=f"route {name}@{effort:g}",
            requested=effort,
            full_effort_tokens=base_full,
            choice=option.label,
            family=option.family,
            control_effort=option.value if option.kind == "control" else 1.0,
        )

    def _route_option(self, route: Route, full: float, tokens: float, p: float) -> tuple[Option, int | None]:
        """A router route as an option, and the budget it was measured with."""
        e = route.effort
        if e >= 1:
            return Option(route.model, "full", 1.0, tokens, p), None
        if e <= 0:
            return Option(route.model, "none", 0.0, 0.0, p, budget=0), 0
        if route.model != BASE and self.predictor.is_control(route.model):
            return Option(route.model, "control", e, tokens, p), None
        budget = max(self.s.min_budget, math.ceil(e * full * self.s.budget_slack))
        return Option(route.model, "cut", e, tokens, p, budget=budget), budget
