"""The embedded synthetic task: running digit sum mod 10 over indexed digits.

Question ``a3 b7 c2 d9`` (2–16 digits, each tagged by its position letter); chain of thought
``a3 b7>0 c2>2 d9>1`` (each digit by its letter, then the running sum mod 10); answer
``\boxed{1}``. Each step is a 10×10 lookup the tiny model learns reliably; without the chain
the answer is parity-like, so accuracy depends on thinking. Difficulty = number of digits.

Reasoning styles taught to the base model (`STYLE_MIX`; the first step fixes the style):
``verbose`` (the chain, then `recheck_passes` redundant re-check passes: the overthinking),
``partial`` (a re-check stopped early with a conclusion; not in the shipped mix), ``plain`` (the
chain alone), ``terse`` (three tokens a step, short questions only: a short path on easy
prompts), ``compact`` (two digits a step, less reliable), ``none`` (a guess), ``cut`` (a chain
cut without a conclusion: what forced ``</think>`` produces). Details: docs/embedded-model.md.

Splits: a partition by hash (10% ``test``, 10% ``dev``, the rest ``train``): no overlap.
"""

from __future__ import annotations

import hashlib
import random
import re

from .base import Problem, extract_boxed

LETTERS = "abcdefghijklmnop"
MIN_DIGITS, MAX_DIGITS = 2, len(LETTERS)
SPLITS = ("train", "dev", "test")
STYLE_MIX = {"verbose": 0.62, "plain": 0.22, "compact": 0.07, "none": 0.04, "cut": 0.05}
STYLES = ("verbose", "partial", "plain", "terse", "compact", "none", "cut")
TERSE_MAX = 6  # the terse style is taught on questions of at most this many digits (the easy bucket)
RECHECK_WORD = " check"
RECHECK_PASSES = 1
CONCLUDE_WORD = " answer"


def _split_of(question: str) -> str:
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def question_for(digits: list[int]) -> str:
    return " ".join(f"{LETTERS[i]}{d}" for i, d in enumerate(digits))


def parse_question(question: str) -> list[int]:
    items = question.split()
    if not items or any(len(t) != 2 or t[0] != LETTERS[i] or not t[1].isdigit() for i, t in enumerate(items)):
        raise ValueError(f"not a digits question: {question!r}")
    return [int(t[1]) for t in items]


def answer_for(digits: list[int]) -> str:
    return str(sum(digits) % 10)


def _steps(digits: list[int]) -> list[tuple[int, int]]:
    """(index, running sum mod 10) after each digit from the second on."""
    s, out = digits[0], []
    for i in range(1, len(digits)):
        s = (s + digits[i]) % 10
        out.append((i, s))
    return out


def recheck_steps(digits: list[int], passes: int = RECHECK_PASSES) -> list[str]:
    """The re-check as a list of steps (each pass: the word and the first digit, then one step
    per digit), `passes` passes."""
    one = [f"{RECHECK_WORD} {LETTERS[0]}{digits[0]}"] + [f" {LETTERS[i]}{digits[i]}>{s} ok" for i, s in _steps(digits)]
    return one * passes


def parse_styles(spec: str) -> dict[str, float]:
    """``"verbose=0.5,plain=0.2,…"`` → a style mix (weights need not sum to 1)."""
    mix = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, _, w = part.partition("=")
        try:
            mix[name] = float(w)
        except ValueError:
            name = ""
        if name not in STYLES:
            raise ValueError(f"bad style {part!r}: use name=weight with names from {', '.join(STYLES)}")
    if not mix or any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"style mix {spec!r} needs at least one positive weight")
    return mix


def chain(digits: list[int], style: str, stop: int | None = None, passes: int = RECHECK_PASSES) -> str:
    """The thinking text (between the markers) for `digits` in `style` (``cut`` excluded);
    ``partial`` keeps the first `stop` re-check steps (1 ≤ stop < all) and concludes."""
    head = f"{LETTERS[0]}{digits[0]}"
    if style == "none":
        return ""
    if style == "compact":
        parts, s, i = [head], digits[0], 1
        while i < len(digits):
            j = min(i + 2, len(digits))
            s = (s + sum(digits[i:j])) % 10
            parts.append("".join(f"{LETTERS[k]}{digits[k]}" for k in range(i, j)) + f">{s}")
            i = j
        return " ".join(parts)
    if style == "terse":
        return " ".join([head] + [f"{LETTERS[i]}{digits[i]}{s}" for i, s in _steps(digits)])
    plain = " ".join([head] + [f"{LETTERS[i]}{digits[i]}>{s}" for i, s in _steps(digits)])
    if style == "plain":
        return plain
    if style == "verbose":
        return plain + "".join(recheck_steps(digits, passes))
    if style == "partial":
        steps = recheck_steps(digits, passes)
        if stop is None or not 1 <= stop < len(steps):
            raise ValueError(f"partial stop must be in 1..{len(steps) - 1}")
        return plain + "".join(steps[:stop]) + f"{CONCLUDE_WORD}{answer_for(digits)}"
    raise ValueError(f"unknown style {style!r}")


def last_sum(thinking: str) -> str | None:
    """The last running sum written in a (possibly cut) chain (``>7`` or terse ``b87``), or the
    first digit."""
    sums = [m.group(1) or m.group(2) for m in re.finditer(r">(\d)|[b-p]\d(\d)", thinking)]
    if sums:
        return sums[-1]
    first = re.match(r"\s*a(\d)", thinking)
    return first.group(1) if first else None


class DigitsTask:
    """Running digit sum mod 10; difficulty = number of digits (2–16)."""

    name = "digits"

    def __init__(
        self,
        min_digits: int = MIN_DIGITS,
        max_digits: int = MAX_DIGITS,
        styles: dict[str, float] | None = None,
        recheck_passes: int = RECHECK_PASSES,
    ):
        if not MIN_DIGITS <= min_digits <= max_digits <= MAX_DIGITS:
            raise ValueError(f"digits must satisfy {MIN_DIGITS} <= min <= max <= {MAX_DIGITS}")
        if recheck_passes < 1:
            raise ValueError("recheck_passes must be >= 1")
        self.min_digits, self.max_digits = min_digits, max_digits
        self.styles = dict(styles or STYLE_MIX)  # the supervised data's mix (base model training)
        self.recheck_passes = recheck_passes

    def sample_digits(self, rng: random.Random, split: str, max_digits: int | None = None) -> list[int]:
        hi = min(self.max_digits, max_digits or self.max_digits)
        while True:
            n = rng.randint(self.min_digits, max(self.min_digits, hi))
            digits = [rng.randrange(10) for _ in range(n)]
            if _split_of(question_for(digits)) == split:
                return digits

    def problems(self, split: str = "test", n: int | None = 500, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split`, difficulty spread evenly (short lengths have few
        distinct questions, so they may be under-represented)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        n = 500 if n is None else n
        rng = random.Random(f"digits/{split}/{seed}")
        seen: dict[str, Problem] = {}
        tries = 0
        while len(seen) < n and tries < 50 * n:
            tries += 1
            digits = self.sample_digits(rng, split)
            q = question_for(digits)
            if q not in seen:
                seen[q] = self.make(digits, pid=f"{split}-{seed}-{len(seen)}")
        return list(seen.values())

    def make(self, digits: list[int], pid: str = "") -> Problem:
        q = question_for(digits)
        return Problem(id=pid or q, question=q, answer=answer_for(digits), difficulty=float(len(digits)))

    def grade(self, completion: str, problem: Problem) -> bool:
        got = extract_boxed(completion)
        return got is not None and re.fullmatch(r"\d", got) is not None and got == problem.answer

    def bucket(self, problem: Problem) -> str:
        n = problem.difficulty
        return "easy" if n <= 6 else "mid" if n <= 11 else "hard"

    # --- supervised data for the base model -------------------------------------------------
    def sft_example(
        self, rng: random.Random, style: str | None = None, max_digits: int | None = None
    ) -> tuple[str, str, str]:
        """(question, thinking, answer text) for one training example of a random style."""
        digits = self.sample_digits(rng, "train", max_digits)
        style = style or rng.choices(list(self.styles), weights=list(self.styles.values()))[0]
        if style == "terse" and len(digits) > TERSE_MAX:  # (drawn after, so mixes without terse keep their data)
            digits = self.sample_digits(rng, "train", TERSE_MAX)
        passes = self.recheck_passes
        if style == "cut":
            full = chain(digits, rng.choice(["verbose", "plain"]), passes=passes)
            thinking = full[: rng.randint(2, max(2, len(full) - 1))]
            ans = last_sum(thinking) or str(rng.randrange(10))
        elif style == "partial":
            thinking = chain(digits, style, stop=rng.randrange(1, len(recheck_steps(digits, passes))), passes=passes)
            ans = answer_for(digits)
        else:
            thinking = chain(digits, style, passes=passes)
            ans = answer_for(digits) if style != "none" else str(rng.randrange(10))
        return question_for(digits), thinking, f"\\boxed{{{ans}}}"
