"""DLER — "Doing Length pEnalty Right" (arXiv 2510.15110), on TRL's GRPOTrainer.

- Length penalty = plain truncation: rollouts capped at L tokens earn 0; a correct rollout that
  never closed its thinking earns 0.1.
- Batch-wise reward normalisation, clip-higher (ε 0.2 / 0.28), token-level loss, truncated
  rollouts kept in the loss, dynamic sampling of zero-variance groups (`training.rl`).
Departures (a 1M-parameter model trained for minutes on a CPU): L defaults to 0.55 × the base's
mean full-effort reasoning (its manifest) + 8, near the paper's ≈ 0.5; dropped groups are masked,
not refilled; LoRA rank 8, lr 1e-3 (not 1e-6), KL 0.04, 8 rollouts a prompt, 160 steps.
The runs behind each choice: docs/LOG.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from effort_server.training.rl import Recipe
from effort_server.training.rollouts import Rollout


def dler_reward(r: Rollout, limit: int | None = None) -> float:
    """1 for a correct, properly closed answer within the limit; 0.1 if correct but unclosed; else 0."""
    if r.truncated or (limit is not None and r.completion_tokens > limit) or not r.correct:
        return 0.0
    return 1.0 if r.closed else 0.1


@dataclass
class DlerOptions:
    """DLER's own option (`effort train dler --help`); `--max-completion N` sets L to N directly."""

    limit_frac: float = field(
        default=0.55,
        metadata={"help": "truncation limit L = this × the base's mean full-effort reasoning + 8 tokens"},
    )

    def __post_init__(self):
        if not 0 < self.limit_frac <= 4:
            raise ValueError(f"--limit-frac must be in (0, 4], not {self.limit_frac}")


class DLER(Recipe):
    """DLER: truncation length penalty, batch-normalised GRPO, clip-higher, dynamic sampling."""

    kind = "dler"
    Options = DlerOptions

    @classmethod
    def default_cap(cls, full_effort_tokens: int, options=None) -> int:
        """L = limit_frac × the base's mean full-effort reasoning + 8 tokens (markers, answer)."""
        frac = (options or cls.Options()).limit_frac
        return max(8, math.ceil(frac * full_effort_tokens - 1e-9) + 8)

    def hyper(self) -> dict:
        return {"truncation_limit": self.ctx.max_completion}

    def reward(self, rollouts: list[Rollout]) -> list[float]:
        return [dler_reward(r) for r in rollouts]
