"""The task interface: prompts with a verifiable answer and a difficulty.

A task knows nothing about models or tokenizers. It makes `Problem`s (a question for the user
turn, the reference answer, a difficulty number) and grades a completion's answer text.
Both the embedded synthetic task and user JSONL files implement it, so the trainer, the
evaluator and the router never care which one they hold.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


class TaskError(ValueError):
    """Bad task input (unknown task, missing file, bad JSONL line); the message says how to fix it."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str | None  # None: a prompt without a reference answer (profiling only; never graded correct)
    difficulty: float
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class Task(Protocol):
    name: str

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """`n` problems of `split` (``train``, ``dev`` or ``test``), reproducible from `seed`."""

    def grade(self, completion: str, problem: Problem) -> bool:
        """True when the answer in `completion` (the text after thinking) is correct."""

    def bucket(self, problem: Problem) -> str:
        """Difficulty bucket name (``easy`` / ``mid`` / ``hard``) for tables."""


_BOXED = re.compile(r"\\boxed\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in `text` (nested braces allowed), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def write_jsonl(problems: list[Problem], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for p in problems:
            f.write(json.dumps(p.to_json()) + "\n")
    tmp.replace(path)


def read_problems_jsonl(path: str | Path, answers: bool = True) -> list[Problem]:
    """Read a JSONL file of problems: each line needs ``question`` and ``answer`` (``answer`` may
    be left out when `answers` is False); ``id`` and ``difficulty`` are optional (defaults: line
    number, question length)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"data file not found: {path}")
    out: list[Problem] = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in ("question", "answer")[: 2 if answers else 1] if k not in row]
            if missing:
                raise TaskError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            q = str(row["question"])
            diff = row.get("difficulty", row.get("level", len(q)))
            try:
                diff = float(diff)
            except (TypeError, ValueError):
                raise TaskError(f"{path}:{lineno}: difficulty must be a number, got {diff!r}") from None
            out.append(
                Problem(
                    id=str(row.get("id", lineno)),
                    question=q,
                    answer=None if row.get("answer") is None else str(row["answer"]),
                    difficulty=diff,
                    meta=row.get("meta", {}) or {},
                )
            )
    if not out:
        raise TaskError(f"{path}: no problems in file")
    return out
