"""`effort profile`: onboard a model — measure its full-effort reasoning on the user's prompts.

Runs the prompts of a JSONL file (``question``, optional ``answer``) through vLLM's offline
engine with unrestricted thinking, as `effort eval --settings full` does (the same rows, so
`effort router fit --records` reads them), and writes the model's ``manifest.json``: its think
markers (found as `effort serve` finds them) and its mean full-effort reasoning length, the
policy's L̂ for numeric effort until a router is fitted. The served model then reports
``predicted.source: manifest`` instead of the unmeasured default. An existing manifest keeps
its other fields; the profile's figures go under ``evaluation.profile``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from effort_server.contract.manifest import MANIFEST


@dataclass
class ProfileConfig:
    HELP_MAIN = ("model", "task", "n", "max_tokens", "temperature", "out")

    model: str = field(default="", metadata={"help": "model folder to profile (its manifest.json is written there)"})
    task: str = field(
        default="", metadata={"help": "JSONL file of prompts: question, and answer where accuracy is wanted"}
    )
    n: int = field(default=200, metadata={"help": "prompts to run (a seeded sample; all when the file has fewer)"})
    samples: int = field(default=1, metadata={"help": "samples per prompt"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0 = greedy)"})
    max_tokens: int = field(
        default=0, metadata={"help": "max generated tokens a sample (0: the context length less the longest prompt)"}
    )
    max_model_len: int = field(default=0, metadata={"help": "engine context length (0: the model config's, as serve)"})
    seed: int = field(default=0, metadata={"help": "prompt sample and sampling seed"})
    out: str = field(
        default="", metadata={"help": "folder for results.json / results.md / plot.png (default: MODEL/profile)"}
    )
    think_start: str = field(
        default="", metadata={"help": "text that opens the thinking (default: as serve finds it)"}
    )
    think_end: str = field(default="", metadata={"help": "text that closes the thinking"})
    reasoning_parser: str = field(default="", metadata={"help": "vLLM reasoning-parser name giving the markers"})

    def __post_init__(self):
        if not self.model or not self.task:
            raise ValueError("--model DIR and --task PROMPTS.jsonl are required")
        if not Path(self.model).is_dir():
            raise ValueError(f"--model {self.model}: not a model folder")
        if self.n < 1 or self.samples < 1 or self.max_tokens < 0 or self.max_model_len < 0:
            raise ValueError("--n and --samples must be >= 1, --max-tokens and --max-model-len >= 0")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("--samples > 1 needs --temperature > 0 (greedy samples are identical)")


def profile_summary(rows: list[dict], max_tokens: int) -> dict:
    """The figures written into the manifest from the `full` rows of one model (mean and p90 as
    `effort eval` reports them; accuracy over the graded rows only)."""
    from .evaluate import summarize

    s = summarize(rows)
    graded = [x for x in rows if x["answer"] is not None]
    return dict(
        samples=len(rows),
        prompts=len({x["id"] for x in rows}),
        mean_reasoning=round(s["mean_reasoning"], 2),
        median_reasoning=statistics.median(x["reasoning_tokens"] for x in rows),
        p90_reasoning=round(s["p90_reasoning"], 1),
        thought_share=round(sum(x["thought"] for x in rows) / len(rows), 4),
        cut_at_max_tokens=sum(1 for x in rows if x["thought"] and not x["closed"]),
        accuracy=round(sum(x["correct"] for x in graded) / len(graded), 4) if graded else None,
        graded=len(graded),
        max_tokens=max_tokens,
    )


def run_profile(cfg: ProfileConfig) -> dict:
    from .evaluate import EvalConfig, Evaluator, run_eval
    from .tasks import load_task

    task = load_task(cfg.task, answers=False)
    folder = Path(cfg.model)
    out = Path(cfg.out or folder / "profile")
    ev = Evaluator(cfg.model, cfg.max_model_len, (cfg.think_start, cfg.think_end, cfg.reasoning_parser))
    problems = task.problems("test", cfg.n, cfg.seed)
    longest = max(len(ev.prompt_ids(p.question)) for p in problems)
    max_tokens = cfg.max_tokens or ev.max_model_len - longest
    if max_tokens < 1 or longest + max_tokens > ev.max_model_len:
        raise ValueError(
            f"the longest prompt ({longest} tokens) and --max-tokens {max_tokens} exceed the context "
            f"length {ev.max_model_len}: lower --max-tokens or raise --max-model-len"
        )
    eval_cfg = EvalConfig(
        model=cfg.model,
        adapters="base",
        settings="full",
        router="none",
        task=cfg.task,
        n=cfg.n,
        seed=cfg.seed,
        temperature=cfg.temperature,
        samples=cfg.samples,
        max_tokens=max_tokens,
        out=str(out),
        max_model_len=ev.max_model_len,
    )
    t0 = time.time()
    payload = run_eval(eval_cfg, ev, task)
    summary = profile_summary(payload["results"], max_tokens)
    if summary["thought_share"] == 0:
        raise ValueError(
            f"the model never opened {ev.think[0]!r} on these prompts: give its markers with "
            "--think-start/--think-end or --reasoning-parser"
        )
    if summary["cut_at_max_tokens"]:
        print(
            f"effort: warning: {summary['cut_at_max_tokens']} of {summary['samples']} samples were still thinking at "
            f"--max-tokens {max_tokens}: the measured length is a lower bound (raise --max-tokens / --max-model-len)",
            file=sys.stderr,
        )
    full = max(1, round(summary["mean_reasoning"]))
    record = dict(
        task=str(cfg.task),
        temperature=cfg.temperature,
        seed=cfg.seed,
        records=str(out / "results.json"),
        date=time.strftime("%Y-%m-%d"),
        wall_time_s=round(time.time() - t0, 1),
        **summary,
    )
    manifest = ev.manifest if ev.measured else ev.manifest.model_copy(update={"task": str(cfg.task)})
    manifest = manifest.model_copy(
        update={
            "default_full_effort_tokens": full,
            "evaluation": {**manifest.evaluation, "profile": record},
        }
    )
    try:
        path = manifest.write(folder)
    except OSError as e:
        raise ValueError(
            f"cannot write {folder / MANIFEST} ({e.strerror}): profile a writable copy of the model"
        ) from None
    acc = "" if summary["accuracy"] is None else f", accuracy {100 * summary['accuracy']:.1f}% of {summary['graded']}"
    print(
        f"{manifest.name}: full-effort reasoning {summary['mean_reasoning']:g} tokens on average "
        f"(median {summary['median_reasoning']:g}, p90 {summary['p90_reasoning']}) over {summary['samples']} samples{acc}; "
        f"markers {manifest.think_start!r} / {manifest.think_end!r}\nwrote {path} and {out}/results.json "
        f"(router records: effort router fit --records {out}/results.json)"
    )
    return record
