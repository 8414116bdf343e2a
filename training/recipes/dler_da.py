"""Difficulty-aware DLER: DLER with a per-prompt truncation limit, tightened on prompts the model
solves easily (by its running pass rate).

For prompt x with running pass rate p(x) and running short correct length m(x) (exponential
averages over its groups of the accuracy and of the lower-quartile correct completion length —
a quartile, so one lucky short guess does not set it):

    L(x) = L − t × (L − min(L, shrink × m(x))),   t = clip((p(x) − p_ref) / (p_full − p_ref), 0, 1)

so prompts solved at ≤ p_ref (0.5) keep DLER's L and prompts solved ≥ p_full (0.8) of the time
are cut at shrink (0.93) × their own short correct length: while a shorter correct path is
rarer than a quarter of the rollouts it is paid and the common path is not; once it is the
common path the limit falls under it too, every rollout earns 0 and dynamic sampling drops the
group (no push either way), so a prompt is never pushed below its shortest correct path. A
rollout longer than L(x) counts as truncated (reward 0). Everything else is DLER (`dler.py`), departures included. Departure: the
paper does not publish its schedule; this one, relative to the prompt's own length, is ours.

History (500 held-out prompts, greedy, vLLM; "easy" = the easiest third, 2–6 digits):
- On the first two bases the only path shorter than the plain chain was "compact" (two digits a
  step), 14–20% correct in samples: with the limit L × (1 − 0.7 t) (floor 0.3 L) DLER and this
  recipe both ended at the plain chain on every easy prompt (easy 15.3 = 15.3); limits relative
  to the prompt's length rewarded compact when sampled but it vanished within ~40 steps.
- A stage-3 base with the terse chain (three tokens a step) on all lengths, 4 minutes of
  training (reliable on easy prompts, 14% on hard): terse in 18% of easy rollouts at first, 5%
  by step 60, 1% at the end with this limit — it lost on the mid and hard prompts (one shared
  first step) faster than it won on easy ones.
- Terse trained to 100% on all lengths (12 minutes): DLER itself went terse everywhere (99.6%,
  27.2 tokens, easy 12.0) — nothing left for the difficulty-aware limit to add.
- Terse taught on ≤ 6 digits only (`TERSE_MAX`; the base never starts it on longer prompts,
  100% correct when it does on easy ones): DLER 92.8% (hard 80.6%, a late accuracy dip at
  seed 0), 34.3 tokens, easy 14.0; this recipe 99.8%, 34.7, easy 12.0 — every easy prompt
  terse. Same base, same seed, same steps. Seed 1: DLER 99.8%, 35.3, easy 14.2; this recipe
  97.2% (hard 92.8%, a late dip), 34.8, easy 12.3. The easy-third gap holds at both seeds.
- The late dips on hard prompts came with the lr held constant to the last step; decayed
  linearly to 0 (`--lr-schedule linear`, what `make adapters` runs) seed 0 gives DLER 100.0%,
  34.9, easy 12.7 and this recipe 100.0%, 34.7, easy 12.0 (the shipped pair: 5% fewer tokens on
  the easy third at equal accuracy). Seeds 1 and 2 with the same settings: DLER reached the
  terse chain on the easy prompts by itself (easy 11.99 against this recipe's 12.02, and 11.99
  = 11.99; all 100.0%) — the terse chain is the easy third's floor, so this recipe is fewer
  only where DLER stops above it.
"""

from __future__ import annotations

import math

from training.rl import Rollout

from .dler import DLER, dler_reward


def da_limit(limit: int, pass_rate: float, own_len: float | None, shrink: float = 0.93,
             p_ref: float = 0.5, p_full: float = 0.8) -> int:
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


class DLERDA(DLER):
    """Difficulty-aware DLER: tighter truncation on prompts the model solves easily."""

    kind = "dler-da"
    shrink = 0.93
    p_ref = 0.5
    p_full = 0.8

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
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
            group = rollouts[i:i + g]
            pid = group[0].prompt_id
            right = [r.completion_tokens for r in group if r.correct and r.closed and not r.truncated]
            self.pass_rate[pid] = p = update_running(self.pass_rate.get(pid), len(right) / len(group))
            self.own_len[pid] = own = update_running(self.own_len.get(pid), low_quartile(right))
            lim = da_limit(self.ctx.max_completion, p, own, self.shrink, self.p_ref, self.p_full)
            limits.append(lim)
            out += [dler_reward(r, lim) for r in group]
        self.extra_metrics = {"mean_limit": sum(limits) / len(limits)}
        return out
