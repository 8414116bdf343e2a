"""e1 — adaptive effort control (arXiv 2510.27042): one adapter, effort chosen per request.

- The effort fraction r is written into the prompt (the manifest's `control`:
  ``Think for effort 0.50 of full.`` before the question); r is drawn per training prompt
  from 0.20, 0.25, …, 1.00.
- T(x) = the reference full-effort reasoning length of prompt x: the base model's greedy
  length, measured before training, then a running average of correct rollouts at r ≥ 0.95.
- Reward: a correct answer whose reasoning length ℓ is near r × T(x).
- After training, a calibration measures the realised ratio ℓ / T(x) at control values 0.1 … 1.0
  on dev prompts through vLLM and stores the monotone inverse map in the manifest's control, so
  a request for effort r writes the control value whose realised length is r × full.

Departures: a warm-up (self-distillation of the base's own greedy completions with random
effort texts, 64 LoRA steps) before GRPO, because a model that has never seen an effort text
can be derailed by one (the embedded model is); the KL reference is the warmed-up adapter. The
paper rewards any correct answer with ℓ ≤ r × T(x). Here the reward is
two-sided, 1 − |ℓ/T(x) − r| / band (band 0.3, floored at 0): with the one-sided rule effort 1.0
earns as much for a short path as for a full one, so nothing keeps effort 1.0 near full length,
and only calibration would make length track effort. T(x) is not updated from rollouts at lower
efforts (that would chase its own shrinking tail).

Measured on the embedded model (not yet meeting the issue's target):
- warm-up: greedy accuracy with an effort text 5% → 100% in 64 steps (~20 s);
- lr 1e-3, KL 0.04 (the defaults), stopped by the 15-minute cap after 95 GRPO steps (8–9 s a
  step: long completions plus the KL pass): rollout |ratio − effort| fell from 0.43 to 0.34 and
  reward rose 0.19 → 0.24, but held-out greedy lengths do not follow the control yet — realised
  ratio 0.80–0.83 at every control value 0.1 … 1.0 (flat calibration), accuracy 98.8% at 1.0;
- lr 2e-3, KL 0.01: collapsed within 15 steps (rollout accuracy 0.97 → 0.03, KL 2.7).

Tried with a base whose correct lengths form a continuum (not shipped; reverted): a second
supervised stage (`effort train base --init-from … --recheck-passes 2 --styles
verbose=0.5,partial=0.16,plain=0.14,compact=0.1,none=0.04,cut=0.06`, 2.5M tokens, 8.5 min) gave a
base with two re-check passes and re-checks stopped at any step with a conclusion: greedy 100%,
126.1 reasoning tokens, 71.7% of them re-check; its temperature-1 samples (200 dev prompts × 8)
are correct at length ratios 0.3–1.0 (partial 26% of samples, 88% correct; plain 15%, 98%;
compact 15%, 14%). The warm-up was then hindsight relabelling — every correct temperature-1
sample written with the effort text nearest its ratio, 17 effort bins balanced (2,205 samples
from 384 prompts), 160 LoRA steps: greedy accuracy with an effort text 6% → 98%, yet realised
ratios on held-out prompts were 0.90–0.94 at every control 0.1 … 1.0 (flat) and 98.8% at 1.0.
Probed on 50 dev prompts: the probability of closing right after the chain is 0.068–0.076 and
of stopping mid re-check 0.039–0.045 at every effort text 0.2 … 1.0 — independent of the text.
The LoRA reproduces the samples without reading the effort digits: the stop decision is one
token per sequence, far from the four digit tokens of the text, and the 1M-parameter model's
attention was only ever trained to copy by letter. (Sampling 3,072 completions with HF generate
on one contended thread also took the 15-minute cap: one GRPO step.) Next: a control the model
can read at the decision point (e.g. the effort as a token just before the thinking) or a
much longer warm-up weighted on the stop decisions.

Follow-up probe (same base; `scripts/e1_warmup_probe.py` sample / warmup / measure): the same
relabelled warm-up with the loss weighted ×20 on the decision tokens (``</think>``, `` check``,
`` answer`` and each token after an `` ok``), 300 LoRA steps at lr 2e-3, samples drawn with vLLM (3,072 in 2.6 min instead of most of
the cap): the text is now read — P(close right after the chain) 0.89 at effort 0.3 vs 0.002 at
1.0 — and greedy length ratios rise with effort (64 test prompts: 0.59 / 0.61 / 0.70 / 0.75 at
0.25 / 0.5 / 0.75 / 1.0), but accuracy fell to 67–78% and the range is compressed (weight ×5,
lr 1e-3, 400 steps: 0.66 / 0.75 / 0.73 / 0.89, accuracy 81–91% — still below the base). So the
decision weighting is the missing piece; the weight, lr and bin coverage (0.40–0.55 and
0.85–0.95 had < 20 samples each) need tuning before GRPO and calibration.
"""

from __future__ import annotations

import random

from server.manifest import Control
from training.rl import Recipe, Rollout

CONTROL = Control(kind="prompt-prefix", template="Think for effort {effort} of full.\n{prompt}")
GRID = [round(0.2 + 0.05 * i, 2) for i in range(17)]  # 0.20 … 1.00
CALIBRATION_POINTS = [round(0.1 * i, 1) for i in range(1, 11)]
REPORT_EFFORTS = (0.25, 0.5, 0.75, 1.0)


def e1_reward(r: Rollout, t_ref: float, band: float = 0.3) -> float:
    if not r.correct or t_ref <= 0:
        return 0.0
    ratio = r.reasoning_tokens / t_ref
    return max(0.0, 1.0 - abs(ratio - r.effort) / band)


def calibration_map(realised: dict[float, float], targets=GRID) -> list[list[float]]:
    """Invert realised ratio(control) into [[requested effort, control value], …].

    `realised` is made monotone (running max from low control values), then each target is
    linearly interpolated between the two control values that bracket it; targets outside the
    reachable range get the nearest end."""
    cs = sorted(realised)
    mono, best = [], -1.0
    for c in cs:
        best = max(best, realised[c])
        mono.append((c, best))
    out = []
    for t in targets:
        if t <= mono[0][1]:
            out.append([t, mono[0][0]])
            continue
        if t >= mono[-1][1]:
            first_top = next(c for c, v in mono if v >= mono[-1][1])
            out.append([t, first_top])
            continue
        for (c0, v0), (c1, v1) in zip(mono, mono[1:]):
            if v0 <= t <= v1:
                c = c0 if v1 == v0 else c0 + (t - v0) / (v1 - v0) * (c1 - c0)
                out.append([t, round(c, 3)])
                break
    return out


class E1(Recipe):
    """e1: one adapter, effort fraction in the prompt, calibrated after training."""

    kind = "e1"
    control = CONTROL
    band = 0.3
    warmup_steps = 64

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.t_ref: dict[str, float] = {}
        self.warmup: dict = {}

    def hyper(self) -> dict:
        return {"band": self.band, "effort_grid": [GRID[0], GRID[-1]], "reference": "base greedy length",
                "warmup": self.warmup}

    def rows(self, problems) -> list[dict]:
        rng = random.Random(self.cfg.seed + 7)
        rows = []
        for p in problems:
            e = rng.choice(GRID)
            rows.append({"prompt": self.ctx.render(CONTROL.render(p.question, e)), "prompt_id": p.id, "effort": e})
        return rows

    def prepare(self, problems, log=print) -> None:
        """Reference lengths, then the warm-up: the base has never seen an effort text and
        loses its way with one (measured: 100% → 15% greedy accuracy with the text in front),
        so the LoRA first learns, by self-distillation, to give the base's own greedy
        completion with a random effort text present. GRPO then starts from full accuracy."""
        greedy = self.ctx.greedy(problems)
        self.t_ref = {pid: float(max(1, r.reasoning_tokens)) for pid, (r, _) in greedy.items()}
        rng = random.Random(self.cfg.seed + 11)
        pairs = [(self.ctx.render(CONTROL.render(p.question, rng.choice(GRID))), greedy[p.id][1])
                 for p in problems if greedy[p.id][0].correct]
        probe = problems[: min(64, len(problems))]
        texts = [CONTROL.render(p.question, rng.choice(GRID)) for p in probe]
        before = sum(r.correct for r, _ in self.ctx.greedy(probe, texts).values()) / len(probe)
        steps = 2 if self.cfg.quick else self.warmup_steps
        self.ctx.sft(pairs, steps=steps, lr=self.cfg.lr, seed=self.cfg.seed, log=log)
        after = sum(r.correct for r, _ in self.ctx.greedy(probe, texts).values()) / len(probe)
        self.warmup = {"steps": steps, "pairs": len(pairs), "accuracy_with_effort_text_before": before,
                       "after": after}
        log(f"e1 warm-up: greedy accuracy with an effort text {100 * before:.0f}% -> {100 * after:.0f}% "
            f"({steps} steps on {len(pairs)} self-distilled pairs)")

    def state(self) -> dict:
        return {"t_ref": self.t_ref, "warmup": self.warmup}

    def load_state(self, state: dict) -> None:
        self.t_ref = dict(state.get("t_ref", {}))
        self.warmup = dict(state.get("warmup", {}))

    def reward(self, rollouts: list[Rollout]) -> list[float]:
        out = [e1_reward(r, self.t_ref.get(r.prompt_id, 0.0), self.band) for r in rollouts]
        for r in rollouts:
            if r.correct and r.effort >= 0.95 and r.prompt_id in self.t_ref:
                self.t_ref[r.prompt_id] = 0.9 * self.t_ref[r.prompt_id] + 0.1 * r.reasoning_tokens
        ratios = [r.reasoning_tokens / self.t_ref[r.prompt_id] for r in rollouts if self.t_ref.get(r.prompt_id)]
        efforts = [r.effort for r in rollouts if self.t_ref.get(r.prompt_id)]
        if ratios:
            self.extra_metrics = {"ratio_error": sum(abs(a - b) for a, b in zip(ratios, efforts)) / len(ratios)}
        return out

    def finish(self, adapter_dir, evaluator) -> dict:
        """Calibrate on dev prompts, then measure the requested efforts on test prompts."""
        from server.manifest import AdapterManifest
        from server.registry import Adapter

        task = self.ctx.task
        m = AdapterManifest.read(adapter_dir)
        adapter = Adapter(m.name, adapter_dir.resolve(), m, lora_id=11)
        dev = task.problems("dev", min(100, self.cfg.eval_n), 0)
        base_dev = {r["id"]: r["reasoning_tokens"] for r in evaluator.generate(dev, task, None, [None] * len(dev))}
        realised = {}
        for c in CALIBRATION_POINTS:
            rows = evaluator.generate(dev, task, adapter, [None] * len(dev), effort=c)
            realised[c] = _mean_ratio(rows, base_dev)
        m.control = Control.model_validate({**CONTROL.model_dump(), "calibration": calibration_map(realised)})
        m.write(adapter_dir)
        adapter = Adapter(m.name, adapter_dir.resolve(), m, lora_id=12)
        test = task.problems("test", self.cfg.eval_n, 0)
        base_test = {r["id"]: r["reasoning_tokens"] for r in evaluator.generate(test, task, None, [None] * len(test))}
        efforts = {}
        for e in REPORT_EFFORTS:
            rows = evaluator.generate(test, task, adapter, [None] * len(test), effort=e)
            efforts[str(e)] = {"accuracy": sum(r["correct"] for r in rows) / len(rows),
                               "mean_reasoning": sum(r["reasoning_tokens"] for r in rows) / len(rows),
                               "realised_ratio": _mean_ratio(rows, base_test)}
        return {"calibration_realised": {str(k): round(v, 4) for k, v in realised.items()}, "efforts": efforts}


def _mean_ratio(rows, full: dict) -> float:
    vals = [r["reasoning_tokens"] / full[r["id"]] for r in rows if full.get(r["id"])]
    return sum(vals) / len(vals) if vals else 0.0
