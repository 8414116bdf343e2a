"""The difficulty router: it only *scores* a prompt; the policy decides (design §2).

For a prompt it predicts
- the full-effort reasoning length of every model it knows (the base, each adapter), and
- for every route it was fitted on — a (model, effort) pair the server can run — the
  probability of a correct answer and the expected reasoning tokens.

Numpy only, no extra model: a pluggable featuriser (default: hashed character n-gram TF-IDF
plus two length features) feeds linear heads — ridge regressions on log lengths and, for the
correctness of each route, a two-parameter logistic regression on the predicted difficulty (the
route model's own predicted log full-effort length), which generalises from few records. Fitting
lives in `effort_server.training.router_fit`; a fitted router is a folder with ``router.npz``
(arrays) and ``router.json`` (its manifest: featuriser, heads, data, fit quality, the calibrated
margin). Scoring one prompt costs well under a millisecond.

"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROUTER_JSON, ROUTER_NPZ = "router.json", "router.npz"
BASE = "base"  # the name routes use for the base model


class RouterError(ValueError):
    """A missing, unreadable or invalid router."""


# -- featurisers --------------------------------------------------------------------------------
class CharNgramTfidf:
    """Hashed character n-grams (bytes, n = 1..3) with sublinear TF, IDF and L2 norm, followed
    by [log1p(characters), log1p(words)] standardised. Vectorised with numpy: no Python loop over
    characters."""

    name = "char-ngram-tfidf"

    def __init__(
        self, dim: int = 1 << 14, ngrams: tuple[int, int] = (1, 3), idf=None, extra_mean=None, extra_std=None
    ):
        self.dim, self.ngrams = int(dim), (int(ngrams[0]), int(ngrams[1]))
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float32)
        self.extra_mean = None if extra_mean is None else np.asarray(extra_mean, dtype=np.float32)
        self.extra_std = None if extra_std is None else np.asarray(extra_std, dtype=np.float32)

    @property
    def width(self) -> int:
        return self.dim + 2

    def _hashes(self, text: str) -> np.ndarray:
        b = np.frombuffer(text.encode("utf-8", "replace")[:8192], dtype=np.uint8).astype(np.int64)
        parts = []
        for n in range(self.ngrams[0], self.ngrams[1] + 1):
            if len(b) < n:
                continue
            h = np.full(len(b) - n + 1, n * 7919, dtype=np.int64)
            for k in range(n):
                h = (h * 1000003 + b[k : len(b) - n + 1 + k]) & 0x7FFFFFFF
            parts.append(h % self.dim)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _tf(self, text: str) -> np.ndarray:
        return np.log1p(np.bincount(self._hashes(text), minlength=self.dim).astype(np.float32))

    @staticmethod
    def _extras(text: str) -> np.ndarray:
        return np.array([math.log1p(len(text)), math.log1p(len(text.split()))], dtype=np.float32)

    def fit(self, texts: list[str]) -> "CharNgramTfidf":
        df = np.zeros(self.dim, dtype=np.float64)
        for t in texts:
            df += self._tf(t) > 0
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)
        ex = np.stack([self._extras(t) for t in texts])
        self.extra_mean, self.extra_std = ex.mean(0), np.maximum(ex.std(0), 1e-3)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        if self.idf is None:
            raise RouterError("featuriser is not fitted")
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        for i, t in enumerate(texts):
            v = self._tf(t) * self.idf
            out[i, : self.dim] = v / max(float(np.linalg.norm(v)), 1e-6)
            out[i, self.dim :] = (self._extras(t) - self.extra_mean) / self.extra_std
        return out

    def state(self) -> tuple[dict, dict]:
        """(JSON-able config, arrays)."""
        return (
            {"name": self.name, "dim": self.dim, "ngrams": list(self.ngrams)},
            {"idf": self.idf, "extra_mean": self.extra_mean, "extra_std": self.extra_std},
        )

    @classmethod
    def from_state(cls, cfg: dict, arrays) -> "CharNgramTfidf":
        return cls(cfg["dim"], tuple(cfg["ngrams"]), arrays["idf"], arrays["extra_mean"], arrays["extra_std"])


FEATURISERS = {CharNgramTfidf.name: CharNgramTfidf}


def register_featuriser(cls) -> None:
    """Plug in another featuriser (e.g. a sentence-embedding model): a class with `name`,
    `fit(texts)`, `transform(texts) -> (n, width) array`, `state()` and `from_state(cfg, arrays)`."""
    FEATURISERS[cls.name] = cls


# -- the fitted router --------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    model: str  # BASE or an adapter name
    effort: float

    @property
    def label(self) -> str:
        return f"{self.model}@{self.effort:g}"


@dataclass
class Score:
    full_length: dict[str, float]  # model → predicted full-effort reasoning tokens
    p_correct: dict[Route, float]
    tokens: dict[Route, float]


class Router:
    """Linear heads over one featuriser. `length_w[:, j]` predicts log1p(full length) of
    `models[j]`; `tokens_w[:, k]` log1p(reasoning tokens) of `routes[k]`; each in tokens times the
    head's mean correction (manifest ``length_scale`` / ``tokens_scale``); `acc[k] = (a, b)` gives
    P(correct) = sigmoid(a + b × predicted log1p full length of the route's model, uncorrected)."""

    def __init__(
        self,
        featuriser,
        models: list[str],
        length_w: np.ndarray,
        length_b: np.ndarray,
        routes: list[Route],
        tokens_w: np.ndarray,
        tokens_b: np.ndarray,
        acc: np.ndarray,
        manifest: dict,
    ):
        self.featuriser, self.models, self.routes = featuriser, list(models), list(routes)
        self.length_w, self.length_b = np.asarray(length_w, np.float32), np.asarray(length_b, np.float32)
        self.tokens_w, self.tokens_b = np.asarray(tokens_w, np.float32), np.asarray(tokens_b, np.float32)
        self.acc = np.asarray(acc, np.float64).reshape(-1, 2)
        self.manifest = manifest
        self._w = np.concatenate([self.length_w, self.tokens_w], axis=1)
        self._b = np.concatenate([self.length_b, self.tokens_b])
        # mean corrections of the log-space heads (1 for a router fitted without them)
        ls, ts = manifest.get("length_scale") or {}, manifest.get("tokens_scale") or {}
        self._scale = np.array(
            [float(ls.get(m, 1.0)) for m in self.models] + [float(ts.get(r.label, 1.0)) for r in self.routes]
        )

    @property
    def margin(self) -> float:
        """Calibrated: the policy takes the cheapest route whose predicted accuracy is within
        `margin` of the best predicted (set by `effort router calibrate`)."""
        return float(self.manifest.get("calibration", {}).get("margin", self.manifest.get("tolerance", 0.01)))

    def length_error(self, model: str, reference: float | None = None) -> float:
        """The length head's held-out mean absolute error relative to the mean length it was fitted
        on (`reference` when the fit did not record that mean); 0 when unknown."""
        q = (self.manifest.get("quality") or {}).get("length", {}).get(model) or {}
        mean = q.get("mean_tokens") or reference
        mae = q.get("mae_tokens_oof")
        return float(mae) / float(mean) if mae is not None and mean else 0.0

    def score(self, text: str, known: dict[str, float] | None = None) -> Score:
        """`known`: measured full lengths (from `History`) that replace predictions."""
        x = self.featuriser.transform([text])[0]
        y = x @ self._w + self._b
        m = len(self.models)
        tokens = np.expm1(np.maximum(y, 0.0)) * self._scale
        full = {name: float(v) for name, v in zip(self.models, tokens[:m])}
        for name, v in (known or {}).items():
            if name in full:
                full[name] = float(v)
        # the accuracy heads were fitted on the uncorrected log-length prediction
        z_of = {name: max(float(v), 0.0) for name, v in zip(self.models, y[:m])}
        for name, v in (known or {}).items():
            if name in z_of:
                z_of[name] = math.log1p(float(v))
        p, tok = {}, {}
        for k, r in enumerate(self.routes):
            z = z_of.get(r.model, 0.0)
            a, b = self.acc[k]
            p[r] = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, a + b * z))))
            t = float(tokens[m + k])
            if r.model in (known or {}):  # scale the route's tokens with the corrected length
                t *= full[r.model] / max(float(tokens[self.models.index(r.model)]), 1.0)
            tok[r] = t
        return Score(full, p, tok)

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `router.npz` then `router.json`, each through a temp file and a rename."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fcfg, farr = self.featuriser.state()
        arrays = {f"feat_{k}": v for k, v in farr.items()}
        arrays.update(
            length_w=self.length_w,
            length_b=self.length_b,
            tokens_w=self.tokens_w,
            tokens_b=self.tokens_b,
            acc=self.acc,
        )
        man = {
            **self.manifest,
            "featuriser": fcfg,
            "models": self.models,
            "routes": [[r.model, r.effort] for r in self.routes],
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".router.", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / ROUTER_NPZ)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".router.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(man, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / ROUTER_JSON)
        self.manifest = man
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Router":
        folder = Path(folder)
        if not (folder / ROUTER_JSON).is_file() or not (folder / ROUTER_NPZ).is_file():
            raise RouterError(
                f"no router in {folder} (needs {ROUTER_JSON} and {ROUTER_NPZ}; fit one with `effort router fit`)"
            )
        try:
            man = json.loads((folder / ROUTER_JSON).read_text())
            with np.load(folder / ROUTER_NPZ) as z:
                arr = {k: z[k] for k in z.files}
            fcfg = man["featuriser"]
            if fcfg["name"] not in FEATURISERS:
                raise RouterError(f"{folder}: unknown featuriser {fcfg['name']!r}")
            feat = FEATURISERS[fcfg["name"]].from_state(
                fcfg, {k[5:]: v for k, v in arr.items() if k.startswith("feat_")}
            )
            routes = [Route(str(m), float(e)) for m, e in man["routes"]]
            r = cls(
                feat,
                man["models"],
                arr["length_w"],
                arr["length_b"],
                routes,
                arr["tokens_w"],
                arr["tokens_b"],
                arr["acc"],
                man,
            )
        except RouterError:
            raise
        except (KeyError, ValueError, OSError, json.JSONDecodeError) as e:
            raise RouterError(f"invalid router in {folder}: {e}") from None
        if (
            r.length_w.shape != (feat.width, len(r.models))
            or r.tokens_w.shape != (feat.width, len(routes))
            or r.acc.shape != (len(routes), 2)
        ):
            raise RouterError(f"invalid router in {folder}: array shapes do not match its manifest")
        return r


def choose(p: dict, t: dict, margin: float):
    """The policy's rule: the cheapest route (fewest predicted tokens) whose predicted accuracy is
    within `margin` of the best predicted; ties go to the more accurate."""
    best = max(p.values())
    ok = [r for r in p if p[r] >= best - margin - 1e-12]
    return min(ok, key=lambda r: (t[r], -p[r]))
