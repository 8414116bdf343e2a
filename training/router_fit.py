"""`effort router fit` / `effort router calibrate`: the difficulty router from measured records.

Inputs: ``effort eval`` results (``full`` rows: each model's full-effort length; ``route:E`` rows:
the route (model, E) as the server runs it; ``none`` rows: the route (model, 0)) and, for a
model no eval covers, training rollouts (``rollouts.jsonl.gz``).
Fit: per model a ridge regression of log full-effort length; per route a ridge of its tokens and
a two-parameter logistic regression of correctness on the predicted difficulty, out of fold;
the heads' tokens mean-corrected (smearing). Calibrate: the auto margin on held-out records,
the smallest accuracy loss within the tolerance against the best fixed route.
Output: a router folder (`effort_server.contract.scoring.Router`: router.json + router.npz).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effort_server.contract.scoring import BASE, FEATURISERS, Route, Router, RouterError, choose


@dataclass
class RouterFitConfig:
    records: str = field(
        default="", metadata={"help": "comma list of effort-eval results.json files and/or rollouts.jsonl(.gz) files"}
    )
    out: str = field(default="adapters/router", metadata={"help": "router folder to write (router.json + router.npz)"})
    featuriser: str = field(default="char-ngram-tfidf", metadata={"help": "featuriser: " + ", ".join(FEATURISERS)})
    dim: int = field(default=1 << 14, metadata={"help": "hashed feature width"})
    alpha: float = field(default=0.3, metadata={"help": "ridge regularisation"})
    folds: int = field(default=5, metadata={"help": "folds for out-of-fold predictions and fit quality"})
    tolerance: float = field(default=0.01, metadata={"help": "accuracy tolerance of the policy until calibrated"})
    seed: int = field(default=0, metadata={"help": "fold assignment seed"})

    def __post_init__(self):
        if not self.records:
            raise ValueError("--records is required (effort eval results.json and/or rollouts files)")
        if self.featuriser not in FEATURISERS:
            raise ValueError(f"unknown featuriser {self.featuriser!r}; choose one of {', '.join(FEATURISERS)}")
        if self.alpha <= 0 or self.folds < 2 or self.dim < 16:
            raise ValueError("--alpha must be > 0, --folds >= 2, --dim >= 16")
        if not 0 <= self.tolerance < 1:
            raise ValueError("--tolerance must be in [0, 1)")


@dataclass
class RouterCalibrateConfig:
    router: str = field(
        default="adapters/router", metadata={"help": "router folder to calibrate (rewritten in place)"}
    )
    records: str = field(default="", metadata={"help": "held-out effort-eval results.json file(s), comma list"})
    tolerance: float = field(
        default=0.01, metadata={"help": "allowed accuracy loss versus the best fixed route (0.01 = 1 point)"}
    )

    def __post_init__(self):
        if not self.records:
            raise ValueError("--records is required (held-out effort eval results.json)")
        if not 0 <= self.tolerance < 1:
            raise ValueError("--tolerance must be in [0, 1)")


# -- records ------------------------------------------------------------------------------------
@dataclass
class Records:
    full: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    routes: dict[Route, dict[str, list[tuple[float, bool]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    rollout_full: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    sources: list[str] = field(default_factory=list)

    def questions(self) -> list[str]:
        qs = {q for d in (*self.full.values(), *self.rollout_full.values()) for q in d}
        qs |= {q for d in self.routes.values() for q in d}
        return sorted(qs)


def _route_of(setting: str) -> float | None:
    if setting == "full":
        return 1.0
    if setting == "none":
        return 0.0
    kind, _, v = setting.partition(":")
    if kind == "route":
        return float(v)
    return None


def load_records(spec: str) -> Records:
    rec = Records()
    for path in (Path(p.strip()) for p in spec.split(",") if p.strip()):
        if not path.is_file():
            raise FileNotFoundError(f"records file not found: {path}")
        rec.sources.append(str(path))
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            model = _rollout_model(path)
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt") as f:
                for line in f:
                    r = json.loads(line)
                    if r.get("effort", 1.0) >= 1.0 and r.get("closed", True) and not r.get("truncated", False):
                        rec.rollout_full[model][r["question"]].append(float(r["reasoning_tokens"]))
            continue
        try:
            rows = json.loads(path.read_text())["results"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path} is not an `effort eval` results.json (no 'results' list)") from None
        for r in rows:
            effort = _route_of(r.get("setting", ""))
            if effort is None:
                continue
            model = r["adapter"]
            if effort == 1.0:
                rec.full[model][r["question"]].append(float(r["reasoning_tokens"]))
            rec.routes[Route(model, effort)][r["question"]].append((float(r["reasoning_tokens"]), bool(r["correct"])))
    if not rec.full and not rec.rollout_full:
        raise ValueError("the records hold no full-effort rows (eval setting `full`) to fit length heads on")
    return rec


def _rollout_model(path: Path) -> str:
    try:
        return json.loads((path.parent / "manifest.json").read_text())["name"]
    except (OSError, KeyError, json.JSONDecodeError):
        return path.parent.name


# -- maths --------------------------------------------------------------------------------------
def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def spearman(a, b) -> float:
    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


class Ridge:
    """Dual-form ridge on a fixed design X (n × d): one Cholesky per row subset, any number of
    targets."""

    def __init__(self, X: np.ndarray, alpha: float):
        self.X = X.astype(np.float64)
        self.K = self.X @ self.X.T
        self.alpha = alpha

    def fit(self, idx: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Weights and bias from rows `idx` with targets `y`."""
        b = float(y.mean())
        K = self.K[np.ix_(idx, idx)] + self.alpha * np.eye(len(idx))
        a = np.linalg.solve(K, y - b)
        return self.X[idx].T @ a, b

    def oof(self, idx: np.ndarray, y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
        """Out-of-fold predictions for rows `idx`."""
        pred = np.empty(len(idx))
        fold = rng.permutation(len(idx)) % min(folds, len(idx))
        for f in range(fold.max() + 1):
            tr, te = fold != f, fold == f
            if tr.sum() == 0:
                pred[te] = y.mean()
                continue
            w, b = self.fit(idx[tr], y[tr])
            pred[te] = self.X[idx[te]] @ w + b
        return pred


def logistic(z: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[float, float, float]:
    """P(y) = sigmoid(a + b z) by Newton's method with a small L2 on b; returns (a, b, log-loss)."""
    zc = z.mean()
    X = np.stack([np.ones_like(z), z - zc], 1)
    w = np.zeros(2)
    reg = np.array([1e-6, l2])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -50, 50)))
        g = X.T @ (p - y) / len(y) + reg * w
        H = (X * (p * (1 - p))[:, None]).T @ X / len(y) + np.diag(reg)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    p = np.clip(1 / (1 + np.exp(-np.clip(X @ w, -50, 50))), 1e-6, 1 - 1e-6)
    loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(w[0] - w[1] * zc), float(w[1]), loss


# -- fit ----------------------------------------------------------------------------------------
def smear(y: np.ndarray, pred: np.ndarray) -> float:
    """The factor that makes predictions of log1p(tokens) unbiased in tokens (Duan's smearing,
    on out-of-fold predictions): mean measured tokens / mean predicted. A log-space fit predicts
    a geometric-mean-like length, low wherever lengths come in a few paths (e1's mixed controls)."""
    predicted = float(np.mean(np.expm1(np.maximum(pred, 0.0))))
    return round(float(np.mean(np.expm1(y))) / predicted, 4) if predicted > 0 else 1.0


def fit_router(cfg: RouterFitConfig, log=print) -> Router:
    t0 = time.time()
    rec = load_records(cfg.records)
    questions = rec.questions()
    qi = {q: i for i, q in enumerate(questions)}
    feat = (
        FEATURISERS[cfg.featuriser](dim=cfg.dim)
        if cfg.featuriser == "char-ngram-tfidf"
        else FEATURISERS[cfg.featuriser]()
    )
    feat.fit(questions)
    X = feat.transform(questions)
    ridge = Ridge(X, cfg.alpha)
    rng = np.random.default_rng(cfg.seed)

    full_src = {**{m: d for m, d in rec.rollout_full.items()}, **{m: d for m, d in rec.full.items()}}
    models = sorted(full_src, key=lambda m: (m != BASE, m))
    length_w, length_b, quality, oof_z, length_scale = [], [], {}, {}, []
    for m in models:
        qs = sorted(full_src[m])
        idx = np.array([qi[q] for q in qs])
        y = np.log1p(np.array([np.mean(full_src[m][q]) for q in qs]))
        w, b = ridge.fit(idx, y)
        length_w.append(w)
        length_b.append(b)
        pred = ridge.oof(idx, y, cfg.folds, rng)
        oof_z[m] = dict(zip(qs, pred))
        length_scale.append(smear(y, pred))
        quality[m] = {
            "n": len(qs),
            "source": "eval" if m in rec.full else "rollouts",
            "spearman_oof": round(spearman(pred, y), 4),
            "mae_tokens_oof": round(float(np.mean(np.abs(np.expm1(pred) - np.expm1(y)))), 2),
            "mean_tokens": round(float(np.mean(np.expm1(y))), 2),
        }
        log(
            f"length head {m}: n={len(qs)} out-of-fold Spearman {quality[m]['spearman_oof']:.3f}, "
            f"MAE {quality[m]['mae_tokens_oof']:.1f} tokens"
        )

    routes = sorted((r for r in rec.routes if r.model in full_src), key=lambda r: (r.model != BASE, r.model, r.effort))
    skipped = sorted({r.model for r in rec.routes} - set(full_src))
    if skipped:
        log(f"routes of {', '.join(skipped)} skipped: no full-effort records for their length head")
    tokens_w, tokens_b, acc, route_q, tokens_scale = [], [], [], {}, []
    for r in routes:
        qs = sorted(rec.routes[r])
        idx = np.array([qi[q] for q in qs])
        y = np.log1p(np.array([np.mean([t for t, _ in rec.routes[r][q]]) for q in qs]))
        w, b = ridge.fit(idx, y)
        tokens_w.append(w)
        tokens_b.append(b)
        tokens_scale.append(smear(y, ridge.oof(idx, y, cfg.folds, rng)) if y.max() > 0 else 1.0)
        z, c = [], []
        for q in qs:
            zq = oof_z[r.model].get(q)
            if zq is None:  # a question only this route saw: in-sample prediction
                zq = float(X[qi[q]] @ length_w[models.index(r.model)] + length_b[models.index(r.model)])
            for _, ok in rec.routes[r][q]:
                z.append(zq)
                c.append(float(ok))
        a, bb, loss = logistic(np.array(z), np.array(c))
        acc.append((a, bb))
        route_q[r.label] = {"n": len(c), "accuracy": round(float(np.mean(c)), 4), "log_loss": round(loss, 4)}
    if not routes:
        raise ValueError("the records hold no servable routes (eval settings full, none or route:E)")
    manifest = {
        "kind": "router",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fit": {
            "alpha": cfg.alpha,
            "folds": cfg.folds,
            "seed": cfg.seed,
            "dim": cfg.dim,
            "wall_time_s": round(time.time() - t0, 1),
        },
        "data": {"sources": rec.sources, "questions": len(questions)},
        "quality": {"length": quality, "routes": route_q},
        "tolerance": cfg.tolerance,
        "length_scale": dict(zip(models, length_scale)),
        "tokens_scale": {r.label: v for r, v in zip(routes, tokens_scale)},
    }
    width = X.shape[1]
    as_mat = lambda ws: np.stack(ws, 1) if ws else np.zeros((width, 0))  # noqa: E731
    return Router(
        feat,
        models,
        as_mat(length_w),
        np.array(length_b),
        routes,
        as_mat(tokens_w),
        np.array(tokens_b),
        np.array(acc),
        manifest,
    )


def run_fit(cfg: RouterFitConfig) -> Router:
    router = fit_router(cfg)
    router.save(cfg.out)
    print(f"wrote {cfg.out}/router.json, router.npz ({len(router.models)} length heads, {len(router.routes)} routes)")
    return router


# -- calibrate ----------------------------------------------------------------------------------
def replay(router: Router, table: dict[str, dict[Route, tuple[float, float]]], margin: float) -> tuple[float, float]:
    """(accuracy, mean reasoning tokens) of the policy with `margin` on measured outcomes."""
    acc, tok = [], []
    for q, outcomes in table.items():
        s = router.score(q)
        p = {r: s.p_correct[r] for r in outcomes}
        t = {r: s.tokens[r] for r in outcomes}
        r = choose(p, t, margin)
        tok.append(outcomes[r][0])
        acc.append(outcomes[r][1])
    return float(np.mean(acc)), float(np.mean(tok))


def outcome_table(rec: Records, routes: list[Route]) -> dict[str, dict[Route, tuple[float, float]]]:
    """question → route → (mean tokens, mean correct), only questions measured on every route."""
    have = [r for r in routes if r in rec.routes]
    qs = set.intersection(*(set(rec.routes[r]) for r in have)) if have else set()
    return {
        q: {
            r: (float(np.mean([t for t, _ in rec.routes[r][q]])), float(np.mean([c for _, c in rec.routes[r][q]])))
            for r in have
        }
        for q in sorted(qs)
    }


def run_calibrate(cfg: RouterCalibrateConfig, log=print) -> dict:
    router = Router.load(cfg.router)
    rec = load_records(cfg.records)
    table = outcome_table(rec, router.routes)
    if not table:
        raise ValueError(
            "the held-out records share no prompts measured on the router's routes: evaluate "
            "the same adapters and settings the router was fitted on"
        )
    routes = list(next(iter(table.values())))
    fixed = {
        r: (float(np.mean([o[r][1] for o in table.values()])), float(np.mean([o[r][0] for o in table.values()])))
        for r in routes
    }
    best_route = max(fixed, key=lambda r: (fixed[r][0], -fixed[r][1]))
    best_acc, best_tok = fixed[best_route]
    grid = sorted({0.0, *np.round(np.linspace(0, 0.5, 51), 3).tolist()})
    trials = [(m, *replay(router, table, m)) for m in grid]
    ok = [t for t in trials if t[1] >= best_acc - cfg.tolerance - 1e-12]
    if ok:  # the fewest tokens within tolerance; where tokens barely differ (1%), the most accurate;
        # among equally good margins the middle one (robust to the split's noise)
        cheap = min(t[2] for t in ok)
        near = [t for t in ok if t[2] <= cheap * 1.01 + 1e-9]
        top = max(t[1] for t in near)
        plateau = [t for t in near if t[1] >= top - 1e-12]
        margin, acc, tok = plateau[len(plateau) // 2]
    else:
        margin, acc, tok = max(trials, key=lambda t: (t[1], -t[2]))
    # held-out length quality
    length_q = {}
    for m in router.models:
        qs = sorted(rec.full.get(m, {}))
        if len(qs) >= 3:
            pred = [router.score(q).full_length[m] for q in qs]
            length_q[m] = round(spearman(pred, [np.mean(rec.full[m][q]) for q in qs]), 4)
    cal = {
        "margin": margin,
        "tolerance": cfg.tolerance,
        "n": len(table),
        "sources": rec.sources,
        "auto": {"accuracy": round(acc, 4), "mean_reasoning": round(tok, 2)},
        "best_fixed": {
            "route": best_route.label,
            "accuracy": round(best_acc, 4),
            "mean_reasoning": round(best_tok, 2),
        },
        "fixed": {r.label: {"accuracy": round(a, 4), "mean_reasoning": round(t, 2)} for r, (a, t) in fixed.items()},
        "length_spearman_heldout": length_q,
        "met_tolerance": bool(ok),
    }
    router.manifest["calibration"] = cal
    router.save(cfg.router)
    log(
        f"calibrated margin {margin:g} on {len(table)} held-out prompts: auto {100 * acc:.1f}% at {tok:.1f} reasoning "
        f"tokens; best fixed {best_route.label} {100 * best_acc:.1f}% at {best_tok:.1f}"
    )
    for m, s in length_q.items():
        log(f"held-out Spearman predicted vs measured full length, {m}: {s:.3f}")
    if not ok:
        log(
            f"warning: no margin keeps accuracy within {cfg.tolerance:g} of the best fixed route; kept the most accurate"
        )
    return cal


# -- benchmark ----------------------------------------------------------------------------------
__all__ = [
    "RouterFitConfig",
    "RouterCalibrateConfig",
    "fit_router",
    "run_fit",
    "run_calibrate",
    "load_records",
    "spearman",
    "choose",
    "replay",
    "RouterError",
]
