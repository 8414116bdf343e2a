"""Tasks: prompts + exact verifiers. `load_task("digits")` or `load_task("path/to/file.jsonl")`."""

from __future__ import annotations

from pathlib import Path

from .base import Problem, Task, TaskError, extract_boxed, read_problems_jsonl, write_jsonl
from .digits import DigitsTask
from .jsonl_math import JsonlMathTask

TASKS = {"digits": DigitsTask}


def load_task(spec: str, answers: bool = True) -> Task:
    """A task by name (``digits``) or a JSONL file path (graded with math-verify; `answers` False:
    lines without an answer allowed)."""
    if spec in TASKS:
        return TASKS[spec]()
    if spec.endswith(".jsonl") or Path(spec).exists():
        return JsonlMathTask(spec, answers)
    raise TaskError(f"unknown task {spec!r}: use one of {', '.join(TASKS)} or a path to a .jsonl file")


__all__ = [
    "Problem",
    "Task",
    "TaskError",
    "DigitsTask",
    "JsonlMathTask",
    "load_task",
    "extract_boxed",
    "read_problems_jsonl",
    "write_jsonl",
    "TASKS",
]
