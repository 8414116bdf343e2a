"""`effort report base`: measure the embedded model's overthinking profile, by difficulty.

On a held-out set (default 600 test prompts) it measures, through vLLM:
1. greedy accuracy with unrestricted thinking, and how often the model thinks first;
2. mean reasoning length by difficulty;
3. the share of reasoning tokens spent on the redundant re-check pass (everything from the
   re-check word on), and the accuracy the model would have had if it had answered with the
   sum written before the re-check — equal accuracy means the re-check adds nothing;
4. accuracy when thinking is forced to end at 25% of each prompt's natural length (vLLM
   ``thinking_token_budget``), and with no thinking at all;
5. at temperature 1 (8 samples a prompt): the share of samples that are correct and at least
   40% shorter than their prompt's median sample length — shorter correct paths RL can find.

Writes ``report.json``, ``report.md`` and ``plot.png`` into `--out`, and records the figures and
the measured default full-effort length in the model's ``manifest.json``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .evaluate import BUCKETS, Evaluator, plot, summarize


@dataclass
class BaseReportConfig:
    model: str = field(default="", metadata={"help": "model folder (default: the embedded model)"})
    n: int = field(default=600, metadata={"help": "held-out test prompts"})
    samples: int = field(default=8, metadata={"help": "temperature-1 samples per prompt"})
    seed: int = field(
        default=0,
        metadata={
            "help": "eval-set seed; the temperature-1 samples of each prompt draw from a seed derived from this and the prompt id"
        },
    )
    out: str = field(default="models/effort-tiny/report", metadata={"help": "output folder"})
    update_manifest: bool = field(default=False, metadata={"help": "write the figures into the model's manifest.json"})

    def __post_init__(self):
        if self.n < 1 or self.samples < 2:
            raise ValueError("--n must be >= 1 and --samples >= 2")


def recheck_stats(rows: list[dict], tokenizer) -> dict:
    """Share of reasoning tokens in the re-check pass, and accuracy answering before it."""
    from .tasks.digits import RECHECK_WORD, last_sum

    total = redundant = pre_correct = with_check = 0
    for r in rows:
        text = r["reasoning"]
        total += r["reasoning_tokens"]
        head, sep, tail = text.partition(RECHECK_WORD)
        if sep:
            with_check += 1
            redundant += len(tokenizer.encode(sep + tail, add_special_tokens=False))
        pre_correct += last_sum(head) == r["answer"]
    n = max(1, len(rows))
    return dict(
        recheck_token_share=redundant / max(1, total),
        with_recheck=with_check / n,
        accuracy_answering_before_recheck=pre_correct / n,
    )


def shorter_correct(rows: list[dict]) -> dict:
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    hits = total = 0
    for samples in by_id.values():
        med = statistics.median(s["reasoning_tokens"] for s in samples)
        for s in samples:
            total += 1
            hits += s["correct"] and s["reasoning_tokens"] <= 0.6 * med
    return dict(short_correct_share=hits / max(1, total))


def run_base_report(cfg: BaseReportConfig, evaluator: Evaluator | None = None) -> dict:
    import math

    from effort_server.contract.manifest import ModelManifest

    from .tasks import DigitsTask

    task = DigitsTask()
    probs = task.problems("test", cfg.n, cfg.seed)
    ev = evaluator or Evaluator(cfg.model)
    n = len(probs)
    full = ev.generate(probs, task, None, [None] * n)
    natural = {r["id"]: r["reasoning_tokens"] for r in full}
    cut = ev.generate(probs, task, None, [max(1, math.ceil(0.25 * natural[p.id])) for p in probs])
    none = ev.generate(probs, task, None, [0] * n)
    hot = ev.generate(probs, task, None, [None] * n, temperature=1.0, samples=cfg.samples, seed=cfg.seed)
    report: dict = {"n_prompts": n, "samples_t1": cfg.samples, "by_bucket": {}}
    for b in BUCKETS:
        pick = (lambda rows: rows) if b == "all" else (lambda rows, b=b: [r for r in rows if r["bucket"] == b])
        f = pick(full)
        report["by_bucket"][b] = dict(
            n=len(f),
            digits=f"{int(min(r['difficulty'] for r in f))}-{int(max(r['difficulty'] for r in f))}",
            accuracy=summarize(f)["accuracy"],
            thinks_first=sum(r["thought"] for r in f) / len(f),
            mean_reasoning=summarize(f)["mean_reasoning"],
            **recheck_stats(f, ev.tokenizer),
            accuracy_cut_25=summarize(pick(cut))["accuracy"],
            mean_reasoning_cut_25=summarize(pick(cut))["mean_reasoning"],
            accuracy_no_thinking=summarize(pick(none))["accuracy"],
            accuracy_t1=summarize(pick(hot))["accuracy"],
            **shorter_correct(pick(hot)),
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = report_markdown(report)
    (out / "report.md").write_text(md)
    groups = {("base", "full"): full, ("base", "cut 25%"): cut, ("base", "no thinking"): none}
    plot(groups, out / "plot.png", title="embedded model: accuracy vs reasoning tokens")
    print(md)
    if cfg.update_manifest:
        folder = Path(ev.model_path)
        m = ModelManifest.read(folder)
        m.default_full_effort_tokens = int(round(report["by_bucket"]["all"]["mean_reasoning"]))
        m.evaluation = {"eval_set": f"digits test split, {n} prompts, seed {cfg.seed}", **report}
        m.write(folder)
    return report


def report_markdown(rep: dict) -> str:
    rows = [
        ("digits", "digits", "{}"),
        ("prompts", "n", "{}"),
        ("greedy accuracy", "accuracy", "{:.1%}"),
        ("thinks first", "thinks_first", "{:.0%}"),
        ("mean reasoning tokens", "mean_reasoning", "{:.1f}"),
        ("re-check share of reasoning tokens", "recheck_token_share", "{:.1%}"),
        ("accuracy if answered before the re-check", "accuracy_answering_before_recheck", "{:.1%}"),
        ("accuracy, thinking cut at 25%", "accuracy_cut_25", "{:.1%}"),
        ("accuracy, no thinking", "accuracy_no_thinking", "{:.1%}"),
        ("accuracy at temperature 1", "accuracy_t1", "{:.1%}"),
        ("T=1 samples correct and ≥40% shorter than their prompt's median", "short_correct_share", "{:.1%}"),
    ]
    cols = [b for b in ("easy", "mid", "hard", "all") if b in rep["by_bucket"]]
    lines = ["| measure | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(rep["by_bucket"][c][key]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
