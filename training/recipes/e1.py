"""e1 — adaptive effort control (arXiv 2510.27042): one adapter, effort chosen per request.

Inputs: the base model, a task, `RLConfig`; output: an adapter whose manifest `control` writes the
effort fraction r into the prompt (``Think for effort 0.50 of full.``) with calibration points
mapping a requested effort to a control value.
- T(x), the reference full-effort length, is the upper quartile of the base's correct lengths
  (greedy + samples; the paper's is the greedy length).
- Reward: a correct answer whose reasoning length is near r × T(x).
- After training, a calibration through vLLM stores where the realised ratio rises, so a request
  for effort r realises about r of T(x).
Departures: a warm-up before GRPO (the base's own samples relabelled with the efforts they fit,
loss weighted on the stop decisions), and an anchor after it (`E1.anchor`: supervised steps on
the base's full paths and the adapter's own correct short ones, each under its control).
The design notes and the runs behind each choice: docs/LOG.md.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace

from effort_server.training.rl import Recipe
from effort_server.training.rollouts import Rollout

from effort_server.contract.manifest import Control
from effort_server.contract.markers import split_ids

CONTROL = Control(kind="prompt-prefix", template="Think for effort {effort} of full.\n{prompt}")
GRID = [round(0.2 + 0.05 * i, 2) for i in range(17)]  # 0.20 … 1.00
CALIBRATION_POINTS = GRID  # the controls trained on
REPORT_EFFORTS = (0.25, 0.5, 0.75, 1.0)


def e1_reward(r: Rollout, t_ref: float, band: float = 0.3) -> float:
    if not r.correct or t_ref <= 0:
        return 0.0
    ratio = r.reasoning_tokens / t_ref
    return max(0.0, 1.0 - abs(ratio - r.effort) / band)


def calibration_points(
    realised: dict[float, float],
    accuracy: dict[float, float] | None = None,
    step: float = 0.02,
    full: float = 0.9,
    near: float = 0.1,
    worse: float = 0.02,
) -> list[list[float]]:
    """[[realised ratio, control value], …] for a mixing calibration (``Control.mix``): first the
    control with the lowest realised ratio (the shortest path; controls below it are dropped), then
    the higher controls in order, each kept when its realised ratio is at least `step` above the
    last kept one (the lowest control of each rise; noise and dips are dropped). A requested effort
    between two points is served as the per-prompt mixture of their controls whose average realised
    ratio is that effort.

    With `accuracy` (control → accuracy on the same prompts), a control that realises full length
    (a ratio of at least `full`: a candidate for serving effort 1.0, where accuracy is the contract)
    is left out when another one of about the same length (within `near`) is at least `worse` more
    accurate. Measured on a rerun of the shipped recipe: control 0.40 realised 1.035 of full at
    97.2% on the test prompts, 0.45 1.041 at 100%, and effort 1.0 was served by 0.40. Below full
    length the request is for fewer tokens and the length is the contract: the filter is not
    applied there (on the shipped e1 it would drop controls 0.2 / 0.25 for 2–3 dev prompts of 100
    — within noise: 98.4 / 99.0% on the test prompts — and serve effort 0.25 at 0.41 of full)."""
    cs = sorted(realised)
    if accuracy:
        cs = [
            c
            for c in cs
            if realised[c] < full
            or not any(
                accuracy[d] - accuracy[c] >= worse - 1e-9 and abs(realised[d] - realised[c]) <= near for d in realised
            )
        ]
    start = min(cs, key=lambda c: (realised[c], c))
    out = [[round(realised[start], 4), start]]
    for c in cs[cs.index(start) + 1 :]:
        if realised[c] >= out[-1][0] + step:
            out.append([round(realised[c], 4), c])
    return out


def relabel(
    samples: dict[str, list[tuple[float, list[int]]]], grid=GRID, tol: float = 0.06
) -> list[tuple[str, float, list[int]]]:
    """Hindsight relabelling: per prompt id and effort e of `grid`, the correct completion whose
    length ratio (its reasoning / the prompt's full-effort reasoning) is nearest e, when within
    `tol`. `samples`: prompt id → [(ratio, completion ids)] of correct completions.
    Returns (prompt id, e, completion ids) — one prompt under several efforts with the
    completions that fit each, so the effort text is the only thing that tells them apart."""
    out = []
    for pid, items in samples.items():
        if not items:
            continue
        for e in grid:
            ratio, ids = min(items, key=lambda it: abs(it[0] - e))
            if abs(ratio - e) <= tol:
                out.append((pid, e, ids))
    return out


def decision_weights(completions: list[list[int]], weight: float) -> list[list[float]]:
    """Per completion of one prompt: `weight` on each token where it parts from another of the
    completions (the token after their longest common prefix: stop here or go on), 1 elsewhere.
    Without it the loss is dominated by tokens every effort shares, and the LoRA learns to copy
    the completions without reading the effort text (measured: realised length flat in effort)."""
    out = []
    for i, a in enumerate(completions):
        w = [1.0] * len(a)
        for j, b in enumerate(completions):
            if i == j or a == b:
                continue
            k = 0
            while k < len(a) and k < len(b) and a[k] == b[k]:
                k += 1
            if k < len(a):
                w[k] = weight
        out.append(w)
    return out


@dataclass
class E1Options:
    """e1's own options (`effort train e1 --help`, recorded in the manifest's hyper)."""

    # the flags `effort ... --help` lists (all of them with --help-all)
    HELP_MAIN = ("band",)

    band: float = field(default=0.3, metadata={"help": "reward band around r × T(x), as a fraction of T(x)"})
    warmup_min_steps: int = field(
        default=300, metadata={"help": "decision-weighted LoRA warm-up steps before GRPO, at least"}
    )
    warmup_max_steps: int = field(
        default=600, metadata={"help": "warm-up steps at most (probed every --warmup-check)"}
    )
    warmup_check: int = field(default=50, metadata={"help": "warm-up steps between probes"})
    warmup_gap: float = field(
        default=0.5, metadata={"help": "warm-up ends when the length ratio at effort 1 exceeds 0.25's by this"}
    )
    warmup_accuracy: float = field(default=0.75, metadata={"help": "... at least this greedy accuracy at effort 1"})
    warm_prompts: int = field(
        default=384, metadata={"help": "prompts sampled for the warm-up (GRPO and the anchor train on these)"}
    )
    warm_samples: int = field(default=16, metadata={"help": "temperature-1 samples per warm-up prompt"})
    decision_weight: float = field(
        default=20.0, metadata={"help": "loss weight on the tokens where completions part ways"}
    )
    reference_quantile: float = field(
        default=0.75, metadata={"help": "T(x): this quantile of the base's correct lengths (0 = its greedy length)"}
    )
    reference_samples: int = field(
        default=8, metadata={"help": "temperature-1 samples per dev / test prompt for T(x) in the calibration"}
    )
    calibration_n: int = field(default=300, metadata={"help": "dev prompts of the calibration"})
    tol: float = field(default=0.06, metadata={"help": "a sample fits an effort when |length ratio - effort| <= this"})
    anchor_prompts: int = field(
        default=384, metadata={"help": "anchor after GRPO: base greedy completions of this many prompts"}
    )
    anchor_replay_max: float = field(
        default=0.85, metadata={"help": "anchor: the adapter's own correct completions at a control <= this"}
    )
    anchor_short: str = field(
        default="0.2,0.25", metadata={"help": "anchor: its short completions at control 0.2 relabelled to these"}
    )
    anchor_short_max: float = field(
        default=0.3, metadata={"help": "anchor: ... when their length ratio is at most this"}
    )
    anchor_full_min: float = field(
        default=0.9, metadata={"help": "anchor: base completions only when at least this long a ratio"}
    )
    anchor_steps: int = field(default=80, metadata={"help": "anchor: supervised steps"})
    anchor_lr: float = field(default=2e-4, metadata={"help": "anchor: learning rate"})
    reserve_s: float = field(default=330.0, metadata={"help": "seconds of the --minutes cap kept for the anchor"})

    def __post_init__(self):
        for k in (
            "warmup_min_steps",
            "warmup_max_steps",
            "warmup_check",
            "warm_prompts",
            "warm_samples",
            "reference_samples",
            "calibration_n",
            "anchor_prompts",
        ):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1")
        if self.warmup_max_steps < self.warmup_min_steps:
            raise ValueError("--warmup-max-steps must be >= --warmup-min-steps")
        if not 0 <= self.reference_quantile <= 1 or self.band <= 0 or self.tol <= 0 or self.anchor_lr <= 0:
            raise ValueError("--reference-quantile must be in [0, 1]; --band, --tol and --anchor-lr must be positive")
        if self.anchor_steps < 0 or self.reserve_s < 0:
            raise ValueError("--anchor-steps and --reserve-s must be >= 0")
        try:
            short = [float(x) for x in self.anchor_short.split(",") if x.strip()]
        except ValueError:
            short = []
        if not short or not all(0 < x <= 1 for x in short):
            raise ValueError(f"--anchor-short must be a comma list of efforts in (0, 1], not {self.anchor_short!r}")


class E1(Recipe):
    """e1: one adapter, effort fraction in the prompt, calibrated after training."""

    kind = "e1"
    control = CONTROL
    Options = E1Options

    def __init__(self, cfg, ctx, options=None):
        super().__init__(cfg, ctx, options)
        self.anchor_short = tuple(float(x) for x in str(self.anchor_short).split(",") if x.strip())
        self.reference_quantile = self.reference_quantile or None
        self.t_ref: dict[str, float] = {}
        self.sampled: set[str] = set()  # prompts whose T(x) comes from samples (GRPO trains on these)
        self.warmup: dict = {}
        self.anchor_info: dict = {}

    def hyper(self) -> dict:
        reference = (
            "base greedy length"
            if self.reference_quantile is None
            else f"quantile {self.reference_quantile} of the base's correct lengths (greedy + {self.warm_samples} samples)"
        )
        return {
            "band": self.band,
            "effort_grid": [GRID[0], GRID[-1]],
            "reference": reference,
            "warmup": self.warmup,
            "anchor": self.anchor_info,
        }

    def rows(self, problems) -> list[dict]:
        rng = random.Random(self.cfg.seed + 7)
        rows = []
        for p in [p for p in problems if p.id in self.sampled] if self.sampled else problems:
            e = rng.choice(GRID)
            rows.append({"prompt": self.ctx.render(p.question, CONTROL, e), "prompt_id": p.id, "effort": e})
        return rows

    def prepare(self, problems, log=print) -> None:
        """Reference lengths, then the warm-up (hindsight relabelling, decision-weighted).

        The base has never seen an effort text (with one in front the embedded model falls from
        100% to 5–15% greedy accuracy) and a LoRA that only copies the base's completions never
        reads it. So, through vLLM on the base: the greedy completion of every training prompt
        (T(x) where `reference_quantile` is None; else only of the warm-up prompts), then
        `warm_samples` temperature-1 samples of `warm_prompts` prompts (T(x) of these: the quantile
        of their correct lengths; GRPO and the anchor use only these prompts). Each prompt is
        written with every effort of the grid that one of its correct samples fits (`relabel`),
        the bins balanced, and the LoRA is trained on them
        with the loss weighted `decision_weight`× where a prompt's completions part ways
        (`decision_weights`: close the thinking here, or go on) — `warmup_steps`, then on, probed
        every `warmup_check` steps, until a greedy probe of 64 of the prompts shows the length
        ratio at effort 1.0 `warmup_gap` above the one at 0.25 with `warmup_accuracy` at 1.0 (at
        most `warmup_max_steps`). GRPO then starts from a model that reads the effort text."""
        quick = self.cfg.quick
        warm = problems[: 4 if quick else self.warm_prompts]
        greedy = self._complete(
            problems if self.reference_quantile is None else warm, 0.0, 1
        )  # sampled T(x): warm only
        self.t_ref = {pid: float(max(1, n)) for pid, n, _, _ in greedy}
        ids = {p.id for p in warm}
        rows = [g for g in greedy if g[0] in ids] + self._complete(warm, 1.0, 2 if quick else self.warm_samples)
        if self.reference_quantile is not None:
            self.t_ref.update(reference_lengths(rows, self.reference_quantile))
            self.sampled = {pid for pid in ids if pid in self.t_ref}
        correct: dict[str, list[tuple[float, list[int]]]] = {p.id: [] for p in warm}
        for pid, n, ok, t in rows:
            if ok:
                correct[pid].append((n / self.t_ref[pid], t))
        picked = relabel(correct, GRID, self.tol)
        by_prompt: dict[str, list[tuple[float, list[int]]]] = {}
        for pid, e, t in picked:
            by_prompt.setdefault(pid, []).append((e, t))
        bins: dict[float, list[tuple]] = {}
        for pid, items in by_prompt.items():
            question = self.ctx.problems[pid].question
            for (e, t), w in zip(items, decision_weights([t for _, t in items], self.decision_weight)):
                bins.setdefault(e, []).append((self.ctx.render(question, CONTROL, e), t, w))
        rng = random.Random(self.cfg.seed + 11)
        per = max((len(v) for v in bins.values()), default=0)
        pairs = [x for v in bins.values() for x in v + rng.choices(v, k=per - len(v))]
        log("e1 warm-up: examples per effort " + ", ".join(f"{e:g}:{len(bins[e])}" for e in sorted(bins)))
        probe = warm[:64]  # T(x) is known on these

        def measure() -> dict:  # greedy (HF) on the probe prompts at efforts 0.25 and 1.0
            out = {}
            for e in (0.25, 1.0):
                rs = [
                    r for r, _ in self.ctx.greedy(probe, [CONTROL.with_value(p.question, e) for p in probe]).values()
                ]
                out[str(e)] = {
                    "accuracy": sum(r.correct for r in rs) / len(rs),
                    "ratio": sum(r.reasoning_tokens / self.t_ref[r.prompt_id] for r in rs) / len(rs),
                }
            return out

        before = measure()
        probes: dict[int, dict] = {}
        passed: list[int] = []

        def reads_effort(step: int) -> bool:  # the probe's ratio at 1.0 `warmup_gap` above 0.25, at `warmup_accuracy`
            probes[step] = m = measure()
            log(
                f"e1 warm-up step {step}: effort 0.25 / 1.0 -> length ratio {m['0.25']['ratio']:.2f} / "
                f"{m['1.0']['ratio']:.2f}, {100 * m['1.0']['accuracy']:.0f}% at 1.0"
            )
            if (
                m["1.0"]["ratio"] - m["0.25"]["ratio"] >= self.warmup_gap
                and m["1.0"]["accuracy"] >= self.warmup_accuracy
            ):
                passed.append(step)
            return bool(passed)

        steps = 2 if quick else self.warmup_max_steps
        loss = (
            self.ctx.sft(
                pairs,
                steps=steps,
                lr=self.cfg.lr,
                seed=self.cfg.seed,
                log=log,
                done=reads_effort,
                check_from=self.warmup_min_steps,
                check_every=self.warmup_check,
            )
            if pairs
            else 0.0
        )
        steps = passed[0] if passed else steps  # the step the gate stopped it at, else all of them
        after = probes.get(steps) or measure()
        self.warmup = {
            "steps": steps,
            "prompts": len(warm),
            "samples_per_prompt": 2 if quick else self.warm_samples,
            "examples": {f"{e:g}": len(bins[e]) for e in sorted(bins)},
            "decision_weight": self.decision_weight,
            "tolerance": self.tol,
            "last_loss": round(loss, 4),
            "before": before,
            "after": after,
            "gate": {"gap": self.warmup_gap, "accuracy": self.warmup_accuracy},
            "probes": {
                str(k): {e: {q: round(x, 3) for q, x in v.items()} for e, v in m.items()} for k, m in probes.items()
            },
        }
        log(
            f"e1 warm-up ({steps} steps): effort 0.25 / 1.0 -> length ratio "
            f"{before['0.25']['ratio']:.2f} / {before['1.0']['ratio']:.2f} before, "
            f"{after['0.25']['ratio']:.2f} / {after['1.0']['ratio']:.2f} after; accuracy "
            f"{100 * before['1.0']['accuracy']:.0f}% -> {100 * after['1.0']['accuracy']:.0f}% at 1.0"
        )

    def _complete(self, problems, temperature: float, samples: int) -> list[tuple[str, int, bool, list[int]]]:
        """(prompt id, reasoning tokens, correct and ended by EOS, completion ids ending in EOS)
        for `samples` completions of each problem by the base. Through vLLM (an engine on the
        base, kept for the evaluation after training); `--quick` uses HF generate instead (a few
        prompts; no second engine in the caller's process)."""
        eos = self.ctx.tokenizer.eos_token_id
        out = []
        if self.cfg.quick:
            for _ in range(samples):
                for pid, (r, ids) in self.ctx.greedy(problems, temperature=temperature).items():
                    out.append((pid, r.reasoning_tokens, r.correct and not r.truncated, ids))
            return out
        if self.evaluator is None:
            import torch
            from effort_server.server.engine import default_model
            from effort_server.training.evaluate import Evaluator

            self.evaluator = Evaluator(self.cfg.model or default_model())
            torch.set_num_threads(self.cfg.threads)  # as the run asked, whatever the engine set
        rows = self.evaluator.generate(
            problems,
            self.ctx.task,
            None,
            [None] * len(problems),
            temperature=temperature,
            samples=samples,
            max_tokens=self.ctx.max_completion,
            seed=self.cfg.seed + 11,
            keep_ids=True,
            seed_per_prompt=False,
        )  # the warm-up's draw (see the docstring)
        for r in rows:
            t = r["token_ids"] if r["token_ids"][-1:] == [eos] else r["token_ids"] + [eos]
            out.append((r["id"], r["reasoning_tokens"], r["correct"] and r["finish_reason"] == "stop", t))
        return out

    def after_grpo(self, problems, log=print) -> None:
        self.anchor(problems, log)

    def anchor(self, problems, log=print) -> None:
        """The anchor: a few low-lr supervised steps after GRPO that pull full effort back onto the
        base's own path while keeping what GRPO taught the lower efforts.

        GRPO is what makes length track effort, and what costs accuracy at full effort (its misses
        there are a third re-check pass or a step past the last digit). The anchor trains on the
        base's greedy completions of `anchor_prompts` training prompts under the control 0.95 or
        1.0 (one of the two, drawn per prompt), mixed one to one with the trained adapter's own
        correct greedy completions of the same prompts at a control drawn from the grid up to
        `anchor_replay_max` (without that replay the anchor drags every control above 0.4 to full
        length, measured)."""
        quick = self.cfg.quick
        probs = problems[: 4 if quick else self.anchor_prompts]
        model = self.ctx.model
        with model.disable_adapter() if quick else contextlib.nullcontext():  # vLLM samples the base itself
            full = [
                (pid, ids)
                for pid, _, ok, ids in self._complete(probs, 0.0, 1)  # … of full length: not a
                if ok and self._ratio(pid, ids) >= self.anchor_full_min
            ]  # greedy short path (T(x) is sampled)
        rng = random.Random(self.cfg.seed + 13)
        low = [g for g in GRID if g <= self.anchor_replay_max]
        effs = [rng.choice(low) for _ in probs]
        own = self._own_greedy(probs, effs)
        short = []  # the shortest path, taught again to the lowest controls (the anchor drifts them up)
        if self.anchor_short:
            for pid, _, ids in self._own_greedy(probs, [GRID[0]] * len(probs)):
                if self._ratio(pid, ids) <= self.anchor_short_max:
                    short.append((pid, rng.choice(self.anchor_short), ids))
        by_c: dict[float, list[float]] = {}
        for pid, e, ids in own + short:
            by_c.setdefault(e, []).append(self._ratio(pid, ids))
        replay_ratio = {f"{e:g}": round(sum(v) / len(v), 3) for e, v in sorted(by_c.items())}
        log(
            "e1 anchor replay, mean length ratio by control: " + ", ".join(f"{k}:{v}" for k, v in replay_ratio.items())
        )
        q = {p.id: p.question for p in probs}
        pairs = [(self.ctx.render(q[pid], CONTROL, rng.choice((0.95, 1.0))), ids) for pid, ids in full]
        pairs += [(self.ctx.render(q[pid], CONTROL, e), ids) for pid, e, ids in own + short]
        steps = 2 if quick else self.anchor_steps
        loss = self.ctx.sft(pairs, steps=steps, lr=self.anchor_lr, seed=self.cfg.seed + 17, log=log) if pairs else 0.0
        self.anchor_info = {
            "steps": steps,
            "lr": self.anchor_lr,
            "prompts": len(probs),
            "base_full": len(full),
            "replay": len(own),
            "replay_max_control": self.anchor_replay_max,
            "short": len(short),
            "short_controls": list(self.anchor_short),
            "replay_ratio": replay_ratio,
            "last_loss": round(loss, 4),
        }
        log(
            f"e1 anchor ({steps} steps): {len(full)} base completions at 0.95 / 1.0, {len(own)} own at <= "
            f"{self.anchor_replay_max}; loss {loss:.4f}"
        )

    def _full_lengths(self, evaluator, problems) -> dict[str, float]:
        """The base's full-effort reasoning length of each problem, as T(x) is defined in training:
        its greedy length, or (`reference_quantile`) that quantile of its correct lengths over the
        greedy completion and `reference_samples` temperature-1 samples (the greedy length where
        none is correct)."""
        task = self.ctx.task
        greedy = evaluator.generate(problems, task, None, [None] * len(problems))
        full = {r["id"]: float(r["reasoning_tokens"]) for r in greedy}
        if self.reference_quantile is None:
            return full
        rows = greedy + evaluator.generate(
            problems,
            task,
            None,
            [None] * len(problems),
            temperature=1.0,
            samples=self.reference_samples,
            seed=self.cfg.seed + 19,
        )
        full.update(
            reference_lengths(
                [(r["id"], r["reasoning_tokens"], r["correct"] and r["finish_reason"] == "stop") for r in rows],
                self.reference_quantile,
            )
        )
        return full

    def _ratio(self, pid: str, ids: list[int]) -> float:
        """Reasoning length of a completion (ids) over the prompt's full-effort length T(x)."""
        n = split_ids(list(ids), self.ctx.markers).reasoning_tokens
        return n / self.t_ref.get(pid, float(max(1, n)))

    def _own_greedy(self, problems, efforts) -> list[tuple[str, float, list[int]]]:
        """(prompt id, control, completion ids) of the current adapter's correct greedy completions,
        control `efforts[i]` written into prompt i as is (no calibration). vLLM with the adapter
        saved to a temporary folder; `--quick` uses HF generate."""
        eos = self.ctx.tokenizer.eos_token_id
        if self.cfg.quick:
            got = self.ctx.greedy(problems, [CONTROL.with_value(p.question, e) for p, e in zip(problems, efforts)])
            return [
                (p.id, e, got[p.id][1])
                for p, e in zip(problems, efforts)
                if got[p.id][0].correct and not got[p.id][0].truncated
            ]
        with tempfile.TemporaryDirectory() as tmp:
            self.ctx.model.save_pretrained(tmp)
            adapter = SimpleNamespace(
                name="e1-anchor", lora_id=13, path=tmp, manifest=SimpleNamespace(control=CONTROL)
            )
            rows = self.evaluator.generate(
                problems,
                self.ctx.task,
                adapter,
                [None] * len(problems),
                max_tokens=self.ctx.max_completion,
                effort=list(efforts),
                keep_ids=True,
            )
        return [
            (r["id"], e, r["token_ids"] if r["token_ids"][-1:] == [eos] else r["token_ids"] + [eos])
            for r, e in zip(rows, efforts)
            if r["correct"] and r["finish_reason"] == "stop"
        ]

    def state(self) -> dict:
        return {"t_ref": self.t_ref, "sampled": sorted(self.sampled), "warmup": self.warmup}

    def load_state(self, state: dict) -> None:
        self.t_ref = dict(state.get("t_ref", {}))
        self.sampled = set(state.get("sampled", []))
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
        from effort_server.server.registry import Adapter

        from effort_server.contract.manifest import AdapterManifest

        task = self.ctx.task
        m = AdapterManifest.read(adapter_dir)
        adapter = Adapter(m.name, adapter_dir.resolve(), m, lora_id=11)
        dev = task.problems("dev", min(self.calibration_n, self.cfg.eval_n), 0)
        base_dev = self._full_lengths(evaluator, dev)
        at = _at_efforts(evaluator, dev, task, adapter, CALIBRATION_POINTS)
        realised = {c: _mean_ratio(rows, base_dev) for c, rows in at.items()}
        accuracy = {c: sum(r["correct"] for r in rows) / len(rows) for c, rows in at.items()}
        points = calibration_points(realised, accuracy)
        m.control = Control.model_validate({**CONTROL.model_dump(), "calibration": points, "mix": True})
        m.write(adapter_dir)
        adapter = Adapter(m.name, adapter_dir.resolve(), m, lora_id=12)
        test = task.problems("test", self.cfg.eval_n, 0)
        base_test = self._full_lengths(evaluator, test)
        efforts = {}
        for e, rows in _at_efforts(evaluator, test, task, adapter, REPORT_EFFORTS).items():
            efforts[str(e)] = {
                "accuracy": sum(r["correct"] for r in rows) / len(rows),
                "mean_reasoning": sum(r["reasoning_tokens"] for r in rows) / len(rows),
                "realised_ratio": _mean_ratio(rows, base_test),
            }
        return {
            "calibration_realised": {str(k): round(v, 4) for k, v in realised.items()},
            "calibration_accuracy": {str(k): round(v, 4) for k, v in accuracy.items()},
            "efforts": efforts,
        }


def _at_efforts(evaluator, problems, task, adapter, efforts) -> dict[float, list[dict]]:
    """Greedy rows of `problems` at each effort, from one engine call (every effort's prompts in
    one batch keeps vLLM's batch full where one call per effort waits on each call's longest
    completions: the 17-control calibration on 100 prompts took 46 s instead of 73)."""
    efforts = list(efforts)
    n = len(problems)
    rows = evaluator.generate(
        list(problems) * len(efforts),
        task,
        adapter,
        [None] * (n * len(efforts)),
        effort=[e for e in efforts for _ in range(n)],
    )
    return {e: rows[i * n : (i + 1) * n] for i, e in enumerate(efforts)}


def reference_lengths(rows, quantile: float) -> dict[str, float]:
    """Per prompt id: the `quantile` of the reasoning lengths of its correct completions
    ((prompt id, reasoning tokens, correct, …) rows; prompts with none are left out)."""
    lengths: dict[str, list[int]] = {}
    for pid, n, ok, *_ in rows:
        if ok:
            lengths.setdefault(pid, []).append(n)
    return {pid: float(max(1, sorted(ns)[min(len(ns) - 1, int(quantile * len(ns)))])) for pid, ns in lengths.items()}


def _mean_ratio(rows, full: dict) -> float:
    vals = [r["reasoning_tokens"] / full[r["id"]] for r in rows if full.get(r["id"])]
    return sum(vals) / len(vals) if vals else 0.0
