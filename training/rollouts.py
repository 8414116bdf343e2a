"""Rollouts: one parse of each GRPO completion, and dynamic sampling's keep mask.

`parse_rollout` turns generated ids into a `Rollout` (reasoning tokens by the contract's split —
the server's own count —, closed, truncated by the token cap, correct by the task's verifier);
every reward reads it. `group_keep_mask` drops the completions of prompt groups whose rewards
are all equal (no signal; DAPO's dynamic sampling, which TRL lacks).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rollout:
    """One completion as every reward sees it."""

    prompt_id: str
    effort: float
    completion_tokens: int
    reasoning_tokens: int
    closed: bool  # the thinking was closed by the end marker
    truncated: bool  # stopped by the token cap, not by end-of-sequence
    correct: bool  # closed and the answer verifies


def parse_rollout(ids: list[int], problem, task, tokenizer, markers, cap: int, effort: float = 1.0) -> Rollout:
    """`ids`: the generated ids (TRL keeps the end-of-sequence id when one was generated)."""
    from effort_server.contract.markers import split_ids

    ended = bool(ids) and ids[-1] in markers.eos
    sp = split_ids(list(ids), markers)
    correct = False
    if sp.closed:
        text = tokenizer.decode(list(sp.answer_ids), skip_special_tokens=True)
        correct = bool(task.grade(text, problem))
    return Rollout(
        problem.id,
        effort,
        len(ids),
        sp.reasoning_tokens,
        sp.closed,
        truncated=not ended and len(ids) >= cap,
        correct=correct,
    )


def group_keep_mask(rewards: list[float], group: int, tol: float = 1e-6) -> list[bool]:
    """Dynamic sampling: per completion, False when every reward of its prompt group is equal.
    Completions of one prompt are adjacent, `group` at a time."""
    if group < 1 or len(rewards) % group:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group}")
    keep: list[bool] = []
    for i in range(0, len(rewards), group):
        g = rewards[i : i + group]
        keep += [max(g) - min(g) > tol] * group
    return keep
