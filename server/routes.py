"""The ways a request can be answered, and what each is predicted to cost and score.

An `Option` is one way to run a prompt: a model (the base or an adapter) at its full length, an
effort-controlled adapter (e1) at a control value written into its prompt, a model under a
thinking budget (plain budget forcing), or no thinking. `Predictor.profile(model, …).options()`
predicts, for one prompt, each option's reasoning tokens and accuracy:
- from the difficulty router, per prompt, for the models it was fitted on (length and route heads);
- otherwise from the manifests' measured means, scaled by the base's predicted full length.
An effort-controlled adapter's tokens always come from its manifest's calibrated curve (its
length is a set fraction of the full length by construction, its paths mixed by a hash of the
prompt that no router can see), its accuracy from the router where it has one. Between measured
control values an e1 is not interpolated; a cut is predicted at the accuracy measured for the
nearest cut fraction at or below it. Unmeasured: ``p = None``. `History` keeps measured full
lengths by prompt. The policy (`effort_server.server.policy`) chooses.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from ..contract.manifest import ModelManifest
from ..contract.scoring import BASE, Router
from .registry import Adapter

Kind = Literal["full", "control", "cut", "none"]


@dataclass(frozen=True)
class Option:
    model: str  # BASE or an adapter name
    kind: Kind
    value: float  # control: the effort written into the prompt; cut: fraction of the model's own full length
    tokens: float  # predicted reasoning tokens
    p: float | None  # predicted accuracy; None: never measured
    budget: int | None = None  # cut: the thinking budget it runs under; none: 0
    scaled: bool = False  # tokens are a fixed fraction of the base's predicted length (share its error)

    @property
    def label(self) -> str:
        """What the response reports: ``dler``, ``e1@0.62``, ``base@budget``, ``base@none``."""
        if self.kind == "full":
            return self.model
        if self.kind == "control":
            return f"{self.model}@{self.value:.2f}".rstrip("0").rstrip(".")
        return f"{self.model}@{'budget' if self.kind == 'cut' else 'none'}"

    @property
    def family(self) -> str:
        """The metrics label (a few values per model)."""
        return f"{self.model}@control" if self.kind == "control" else self.label


@dataclass(frozen=True)
class Measured:
    """One model's measured means: (accuracy, mean reasoning tokens) at full length and at each
    control value; accuracy at each cut fraction and without thinking. Tokens are absolute, on
    the eval set of `reference` tokens of base full-length reasoning."""

    full: tuple[float, float] | None
    controls: dict[float, tuple[float, float]]
    cuts: dict[float, float]
    none: float | None
    reference: float | None = None  # the base's mean full length on the same eval set, when known


def _acc_mean(d) -> tuple[float, float] | None:
    if (
        isinstance(d, dict)
        and isinstance(d.get("accuracy"), (int, float))
        and isinstance(d.get("mean_reasoning"), (int, float))
    ):
        return float(d["accuracy"]), float(d["mean_reasoning"])
    return None


_CUT = re.compile(r"^accuracy_cut_(\d+)$")


def measured_base(manifest: ModelManifest | None) -> Measured:
    """The base model's measured profile (`effort report base`): full, cuts, no thinking."""
    ev = (manifest.evaluation if manifest is not None else {}) or {}
    allb = (ev.get("by_bucket") or {}).get("all") or (ev.get("full") or {}).get("all") or {}
    full = _acc_mean(allb)
    cuts = {
        int(m.group(1)) / 100: float(v)
        for k, v in allb.items()
        if (m := _CUT.match(k)) and isinstance(v, (int, float))
    }
    none = allb.get("accuracy_no_thinking")
    return Measured(full, {}, cuts, float(none) if isinstance(none, (int, float)) else None, full[1] if full else None)


def measured_adapter(adapter: Adapter) -> Measured:
    """An adapter's measured profile from its manifest's evaluation (written by training)."""
    ev = adapter.manifest.evaluation or {}
    full = _acc_mean((ev.get("full") or {}).get("all"))
    controls = {}
    for k, v in (ev.get("efforts") or {}).items():
        try:
            c = float(k)
        except ValueError:
            continue
        am = _acc_mean(v)
        if am is not None and 0 < c <= 1:
            controls[c] = am
    if 1.0 in controls:
        full = full or controls[1.0]
        controls.pop(1.0)
    return Measured(full, controls, {}, None)


def _step(cuts: dict[float, float], fraction: float) -> float | None:
    """The accuracy measured at the largest cut fraction at or below `fraction`."""
    below = [f for f in cuts if f <= fraction + 1e-9]
    return cuts[max(below)] if below else None


@dataclass
class Profile:
    """One model's predictions for one prompt: (tokens, p) at full and at each control value,
    accuracy at each cut fraction, no thinking, and its predicted full length."""

    full_length: float
    full: tuple[float, float | None]
    controls: dict[float, tuple[float, float | None]]
    cuts: dict[float, float]
    none: float | None
    scaled: bool = False  # full and control tokens are fractions of the base's predicted length

    def options(self, model: str, spend: int | None, slack: float, control: bool) -> list[Option]:
        out = [Option(model, "full", 1.0, self.full[0], self.full[1], scaled=self.scaled)]
        if control:  # the measured control values only: between them e1 lands on either path
            out += [
                Option(model, "control", c, t, p, scaled=self.scaled)
                for c, (t, p) in sorted(self.controls.items())
                if p is not None
            ]
        elif spend is not None:
            fraction = spend / (slack * max(self.full_length, 1.0))
            if fraction < 1.0:
                cuts = {**self.cuts, **({0.0: self.none} if self.none is not None else {})}
                out.append(
                    Option(
                        model, "cut", fraction, min(float(spend), self.full[0]), _step(cuts, fraction), budget=spend
                    )
                )
        out.append(Option(model, "none", 0.0, 0.0, self.none, budget=0))
        return out


UNMEASURED = "unmeasured default (effort profile measures the model)"  # a base_full source


class Predictor:
    """Per-prompt predictions for every servable model: the router's for the models it knows,
    the manifests' (scaled by the base's predicted full length) for the rest."""

    def __init__(
        self,
        adapters: dict[str, Adapter],
        default_full: float,
        base_manifest: ModelManifest | None = None,
        router: Router | None = None,
        history: History | None = None,
        default_source: str = "manifest",
    ):
        self.adapters, self.default_full = adapters, float(default_full)
        self.default_source = default_source  # where default_full came from: manifest, setting, unmeasured
        self.router, self.history = router, history
        self.base = measured_base(base_manifest)
        self.measured = {BASE: self.base, **{n: measured_adapter(a) for n, a in adapters.items()}}
        self.routed = set(router.models) & ({BASE} | set(adapters)) if router is not None else set()
        # the router's own error on the base's length: how far a spend computed from it may be off
        self.length_error = router.length_error(BASE, self.base.reference) if router is not None else 0.0

    def is_control(self, model: str) -> bool:
        return model != BASE and self.adapters[model].manifest.control.kind != "none"

    def score(self, prompt: str | None):
        """The router's score (None without a router or prompt) and the models whose full length
        came from the history."""
        if self.router is None or prompt is None:
            return None, {}
        known = {}
        if self.history is not None:
            for m in self.router.models:
                v = self.history.get(m, prompt)
                if v is not None:
                    known[m] = v
        return self.router.score(prompt, known), known

    def base_full(self, score, prompt: str | None) -> tuple[float, str]:
        """The base's predicted full-effort reasoning length for the prompt, and its source."""
        if score is not None and BASE in score.full_length:
            src = "history" if self.history is not None and self.history.get(BASE, prompt) is not None else "router"
            return score.full_length[BASE], src
        if self.history is not None and prompt is not None:
            v = self.history.get(BASE, prompt)
            if v is not None:
                return v, "history"
        return self.default_full, self.default_source

    def profile(self, model: str, score, base_full: float) -> Profile:
        if score is not None and model in self.routed:
            prof = self._routed(model, score)
            m = self.measured[model]
            if self.is_control(model) and m.controls and m.full is not None:
                # an effort-controlled adapter's length is, by its calibration, a known fraction of
                # the full length, its paths mixed by a hash of the prompt that no router can see:
                # its tokens come from that curve, its accuracy from the router, per prompt
                scale = base_full / max(self.base.reference or self.default_full, 1.0)
                prof.full = (m.full[1] * scale, prof.full[1])
                prof.controls = {
                    c: (m.controls[c][1] * scale if c in m.controls else t, p) for c, (t, p) in prof.controls.items()
                }
                prof.scaled = True
            return prof
        m = self.measured[model]
        ref = self.base.reference or self.default_full
        scale = base_full / max(ref, 1.0)
        full = (
            m.full if m.full is not None else ((self.base.full[0], ref) if model == BASE and self.base.full else None)
        )
        full_tokens = full[1] * scale if full else base_full
        return Profile(
            full_tokens,
            (full_tokens, full[0] if full else None),
            {c: (t * scale, p) for c, (p, t) in m.controls.items()},
            dict(m.cuts),
            m.none,
            scaled=True,
        )

    def _routed(self, model: str, score) -> Profile:
        routes = {r.effort: r for r in self.router.routes if r.model == model}
        full_len = score.full_length[model]
        full = (score.tokens[routes[1.0]], score.p_correct[routes[1.0]]) if 1.0 in routes else (full_len, None)
        inner = {e: r for e, r in routes.items() if 0 < e < 1}
        if self.is_control(model):
            controls = {e: (score.tokens[r], score.p_correct[r]) for e, r in inner.items()}
            cuts = {}
        else:
            controls, cuts = {}, {e: score.p_correct[r] for e, r in inner.items()}
        none = score.p_correct[routes[0.0]] if 0.0 in routes else None
        return Profile(full_len, full, controls, cuts, none)


def prompt_key(model: str, text: str) -> str:
    return hashlib.blake2b(f"{model}\x00{text}".encode("utf-8", "replace"), digest_size=12).hexdigest()


class History:
    """Bounded LRU of measured full-effort reasoning lengths by (model, prompt): an exponential
    moving average per key, at most `capacity` keys (the oldest-used goes first). Thread-safe."""

    def __init__(self, capacity: int = 10000, alpha: float = 0.5):
        self.capacity, self.alpha = max(0, int(capacity)), alpha
        self._d: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, model: str, text: str) -> float | None:
        k = prompt_key(model, text)
        with self._lock:
            v = self._d.get(k)
            if v is not None:
                self._d.move_to_end(k)
            return v

    def record(self, model: str, text: str, length: float) -> None:
        if self.capacity == 0:
            return
        k = prompt_key(model, text)
        with self._lock:
            old = self._d.pop(k, None)
            self._d[k] = float(length) if old is None else (1 - self.alpha) * old + self.alpha * float(length)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
