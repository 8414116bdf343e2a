"""The policy: request fields + model facts → one immutable `EffortDecision` (design §2).

Precedence for the effort: request `effort` → request `reasoning_effort` → server default.
Budget: effort 0 → 0 (answer at once); effort 1 → no effort budget; otherwise
``clamp(ceil(effort × L̂ × slack), min_budget, max_budget)`` with L̂ the predicted full-effort
reasoning length (the model manifest's default until a router is fitted). Then, always:
the request's `thinking_token_budget` caps it, and so does `max_tokens` minus the answer
reserve (plus the two think markers), so reasoning never consumes the whole output limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .config import OPENAI_EFFORTS, ServerSettings
from .errors import EffortError, ModelNotFound
from .registry import Adapter


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
                 full_effort_tokens: int, router=None):
        self.s, self.adapters, self.base_name = settings, adapters, base_name
        self.full_effort_tokens = full_effort_tokens
        self.router = router
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
    def decide(self, *, model: str | None, effort=None, reasoning_effort=None,
               thinking_token_budget: int | None = None, max_tokens: int | None = None) -> EffortDecision:
        requested, value, source = self._parse_effort(effort, reasoning_effort)
        explicit = self.resolve_model(model)
        if value is None:  # auto
            if self.router is None:
                raise EffortError("effort 'auto' needs a fitted difficulty router and none is configured "
                                  "(fit one with `effort router fit`)", "effort", code="router_not_configured")
            raise EffortError("effort 'auto' is not available yet", "effort")
        adapter = explicit or self._adapter_for(value)
        full = float(self.full_effort_tokens)
        why = [f"{source}={requested if requested is not None else self.s.default_effort}->{value:g}"]
        if value <= 0:
            budget: int | None = 0
            why.append("no thinking")
        elif value >= 1:
            budget = None
            why.append("full effort: no effort budget")
        else:
            raw = math.ceil(value * full * self.s.budget_slack)
            budget = max(self.s.min_budget, raw)
            why.append(f"budget=ceil({value:g}x{full:g}x{self.s.budget_slack:g})={raw}")
        if self.s.max_budget and (budget is None or budget > self.s.max_budget):
            budget = self.s.max_budget
            why.append(f"server max_budget {budget}")
        if thinking_token_budget is not None and (budget is None or thinking_token_budget < budget):
            budget = thinking_token_budget
            why.append(f"request thinking_token_budget {budget}")
        if max_tokens is not None:
            cap = max(0, max_tokens - self.s.answer_reserve - 2)
            if budget is None or budget > cap:
                budget = cap
                why.append(f"output limit {max_tokens} - answer reserve {self.s.answer_reserve} - 2 markers -> {cap}")
        control = None
        if adapter is not None and adapter.manifest.control.kind != "none":
            control = adapter.manifest.control.kind
        if adapter is not None:
            why.append(f"adapter {adapter.name}" + (" (requested)" if explicit else " (effort rule)"))
        return EffortDecision(effort=value, adapter=adapter.name if adapter else None, thinking_budget=budget,
                              control=control, route="fixed", predicted=None, reason="; ".join(why),
                              requested=requested, full_effort_tokens=full)
