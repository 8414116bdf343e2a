"""Difficulty-aware DLER: DLER with a per-prompt truncation limit, tightened on prompts the model
solves easily (by its running pass rate).

For prompt x with running pass rate p(x) (exponential average of its groups' accuracy; a prompt
seen for the first time starts at its current group's accuracy):

    L(x) = L × (1 − (1 − min_frac) × clip((p(x) − p_ref) / (1 − p_ref), 0, 1))

so prompts solved at ≤ p_ref (0.5) keep DLER's L and always-solved prompts get min_frac (0.3) × L.
A rollout longer than L(x) counts as truncated (reward 0). When no correct rollout fits under a
tightened limit the whole group earns 0 and dynamic sampling drops it, so a hard prompt solved
often is never pushed below its shortest correct path; the limit only bites where shorter
correct paths exist. Everything else is DLER (`dler.py`), departures included. Departure: the
paper does not publish its schedule; this linear one is ours.

Measured on the first embedded model (one re-check pass; 500 held-out prompts, greedy, vLLM):
with p_ref 0.5 (the default) 99.8% accuracy, mean reasoning 35.6, easiest third 15.3 tokens; with p_ref 0.9 99.0%,
35.6, 15.3 — DLER gives 100%, 35.6, 15.3. The easiest third does not get shorter: by the time
easy prompts are solved reliably every rollout on them is already the plain chain (the base's
shortest reliable path), the tightened limit (≈ 27 tokens on average late in the run) truncates
all of them, 90–95% of groups are dropped, and nothing shorter and correct is ever sampled to
reward. Open: a shorter style that stays in the sampling distribution (the base's two-digit
"compact" steps, 7% of its training data, vanish from the rollouts within ~30 steps).

Two limits relative to the prompt's own length were tried (not shipped; 90 steps each, counts of
correct rollouts shorter than the plain chain per 640): (a) L(x) = 0.85 × the running mean
correct length on prompts solved ≥ 75%: 22 → 13 → 16 → 5 → 1 by step 40, then 100% of groups
dropped (all rollouts the plain chain, all over the limit); (b) only rollouts within 10% of the
shortest correct sibling paid on prompts solved ≥ 75% (HAPO-like): 22 → 15 → 15 → 7 → 4 → 0 by
step 50. Both reward the shorter path when it is sampled, but the style is chosen by one
shared first step and loses on the mid and hard prompts (where compact is unreliable) faster
than it wins on the easy ones; a base that keeps the shorter style alive is the way forward.

On the shipped base (two re-check passes, partial re-checks; see `e1.py`), DLER with
L = 0.55 × its mean length (78 tokens): 99.4%, 35.6 reasoning tokens (28% of 126.1),
easiest third 15.3; this recipe: 98.6%, easiest third 15.3 again — DLER already ends at the
plain chain on every prompt there too (the limit does not bind on easy prompts, yet the "close
after the chain" decision generalises), and the only shorter path, compact, is 14% correct in
that base's samples. The target needs a reliable path shorter than the plain chain on easy
prompts, which this task's 1M-parameter model does not have.
"""

from __future__ import annotations

from training.rl import Rollout

from .dler import DLER, dler_reward


def da_limit(limit: int, pass_rate: float, min_frac: float = 0.3, p_ref: float = 0.5) -> int:
    t = min(1.0, max(0.0, (pass_rate - p_ref) / (1 - p_ref)))
    return max(1, round(limit * (1 - (1 - min_frac) * t)))


def update_pass_rate(prev: float | None, group_acc: float, keep: float = 0.5) -> float:
    return group_acc if prev is None else keep * prev + (1 - keep) * group_acc


class DLERDA(DLER):
    """Difficulty-aware DLER: tighter truncation on prompts the model solves easily."""

    kind = "dler-da"
    min_frac = 0.3
    p_ref = 0.5

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.pass_rate: dict[str, float] = {}

    def hyper(self) -> dict:
        return {**super().hyper(), "min_frac": self.min_frac, "p_ref": self.p_ref}

    def state(self) -> dict:
        return {"pass_rate": self.pass_rate}

    def load_state(self, state: dict) -> None:
        self.pass_rate = dict(state.get("pass_rate", {}))

    def reward(self, rollouts: list[Rollout]) -> list[float]:
        g = self.cfg.generations
        out: list[float] = []
        limits = []
        for i in range(0, len(rollouts), g):
            group = rollouts[i:i + g]
            pid = group[0].prompt_id
            acc = sum(r.correct for r in group) / len(group)
            self.pass_rate[pid] = p = update_pass_rate(self.pass_rate.get(pid), acc)
            lim = da_limit(self.ctx.max_completion, p, self.min_frac, self.p_ref)
            limits.append(lim)
            out += [dler_reward(r, lim) for r in group]
        self.extra_metrics = {"mean_limit": sum(limits) / len(limits)}
        return out
