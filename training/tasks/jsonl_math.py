"""A user's JSONL math set (GSM8K, MATH-500, …) graded with `math-verify`.

Each line: ``{"question": ..., "answer": ...}`` with optional ``id`` and ``difficulty``
(``answer`` optional too with ``answers=False``: such prompts are measured, never graded correct).
The file has no splits of its own: ``problems`` returns the first `n` after a seeded shuffle
(or all, in file order, when `n` is None), whatever the split.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import Problem, extract_boxed, read_problems_jsonl


class JsonlMathTask:
    name = "jsonl"

    def __init__(self, path: str | Path, answers: bool = True):
        self.path = Path(path)
        self._all = read_problems_jsonl(self.path, answers)
        ds = sorted(p.difficulty for p in self._all)
        self._cuts = (ds[len(ds) // 3], ds[2 * len(ds) // 3])

    def problems(self, split: str = "test", n: int | None = None, seed: int = 0) -> list[Problem]:
        if n is None:
            return list(self._all)
        items = list(self._all)
        random.Random(seed).shuffle(items)
        return items[:n]

    def grade(self, completion: str, problem: Problem) -> bool:
        if problem.answer is None:
            return False
        from math_verify import parse, verify  # heavy import, only when grading

        boxed = extract_boxed(completion)
        target = parse(f"${problem.answer}$") or parse(problem.answer)
        pred = parse(f"\\boxed{{{boxed}}}") if boxed is not None else parse(completion)
        try:
            return bool(target) and bool(pred) and bool(verify(target, pred))
        except Exception:  # math-verify raises on some malformed expressions: count as wrong
            return False

    def bucket(self, problem: Problem) -> str:
        lo, hi = self._cuts
        return "easy" if problem.difficulty < lo else "mid" if problem.difficulty < hi else "hard"
