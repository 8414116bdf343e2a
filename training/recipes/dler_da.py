"""Difficulty-aware DLER: DLER with a per-prompt truncation limit, tightened on prompts the model
solves easily (by its running pass rate).

For prompt x with running pass rate p(x) and running short (lower-quartile) correct length m(x):

    L(x) = L − t × (L − min(L, shrink × m(x))),   t = clip((p(x) − p_ref) / (p_full − p_ref), 0, 1)

so prompts solved at ≤ p_ref (0.5) keep DLER's L and prompts solved ≥ p_full (0.8) are cut at
shrink (0.93) × their own short correct length. The running state is saved in checkpoints.
A rollout longer than L(x) is truncated (reward 0); everything else is DLER, departures included.
Departure: the paper does not publish its schedule; this one, relative to the prompt's own
length, is ours. The runs behind it: docs/LOG.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from effort_server.training.rollouts import Rollout

from .dler import DLER, DlerOptions, dler_reward


def da_limit(
    limit: int, pass_rate: float, own_len: float | None, shrink: float = 0.93, p_ref: float = 0.5, p_full: float = 0.8
) -> int:
    """L(x): DLER's `limit` tightened toward `shrink` × the prompt's own short correct length
    `own_len` as its pass rate goes from `p_ref` to `p_full` (no correct length seen: `limit`)."""
    t = min(1.0, max(0.0, (pass_rate - p_ref) / (p_full - p_ref)))
    target = limit if own_len is None else min(limit, shrink * own_len)
    return max(1, math.floor(limit - t * (limit - target) + 1e-9))


def low_quartile(lengths: list[int]) -> int | None:
    """The lower-quartile length (nearest rank): one lucky short guess does not set it."""
    return sorted(lengths)[len(lengths) // 4] if lengths else None


def update_running(prev: float | None, value: float | None, keep: float = 0.5) -> float | None:
    """Exponential average; the first value starts it, `None` (nothing measured) keeps it."""
    if value is None:
        return prev
    return value if prev is None else keep * prev + (1 - keep) * value


@dataclass
class DlerDaOptions(DlerOptions):
    """dler-da's own options (`effort train dler-da --help`), DLER's limit among them."""

    shrink: float = field(
        default=0.93, metadata={"help": "easy prompts are cut at this × their own short correct length"}
    )
    p_ref: float = field(
        default=0.5, metadata={"help": "running pass rate at or below which a prompt keeps DLER's limit"}
    )
    p_full: float = field(
        default=0.8, metadata={"help": "running pass rate at or above which the limit is fully tightened"}
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.shrink <= 1:
            raise ValueError(f"--shrink must be in (0, 1], not {self.shrink}")
        if not 0 <= self.p_ref < self.p_full <= 1:
            raise ValueError(f"need 0 <= --p-ref < --p-full <= 1, not {self.p_ref} / {self.p_full}")


class DLERDA(DLER):
    """Difficulty-aware DLER: tighter truncation on prompts the model solves easily."""

    kind = "dler-da"
    Options = DlerDaOptions

    def __init__(self, cfg, ctx, options=None):
        super().__init__(cfg, ctx, options)
        self.pass_rate: dict[str, float] = {}
        self.own_len: dict[str, float] = {}

    def hyper(self) -> dict:
        return {**super().hyper(), "shrink": self.shrink, "p_ref": self.p_ref, "p_full": self.p_full}

    def state(self) -> dict:
        return {"pass_rate": self.pass_rate, "own_len": self.own_len}

    def load_state(self, state: dict) -> None:
        self.pass_rate = dict(state.get("pass_rate", {}))
        self.own_len = dict(state.get("own_len", {}))

    def reward(self, rollouts: list[Rollout]) -> list[float]:
        g = self.cfg.generations
        out: list[float] = []
        limits = []
        for i in range(0, len(rollouts), g):
            group = rollouts[i : i + g]
            pid = group[0].prompt_id
            right = [r.completion_tokens for r in group if r.correct and r.closed and not r.truncated]
            self.pass_rate[pid] = p = update_running(self.pass_rate.get(pid), len(right) / len(group))
            self.own_len[pid] = own = update_running(self.own_len.get(pid), low_quartile(right))
            lim = da_limit(self.ctx.max_completion, p, own, self.shrink, self.p_ref, self.p_full)
            limits.append(lim)
            out += [dler_reward(r, lim) for r in group]
        self.extra_metrics = {"mean_limit": sum(limits) / len(limits)}
        return out
