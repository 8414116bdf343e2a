"""The trainer every RL recipe shares: TRL's ``GRPOTrainer`` + a peft LoRA.

`train_recipe` runs a `Recipe` (``training/recipes/``: rewards, prompt rows, running state) with
dynamic sampling (`rollouts.group_keep_mask`), a per-step JSONL log and curves, the rollouts as
JSONL, resumable checkpoints carrying the recipe's state and a wall-clock cap; then evaluates the
adapter through vLLM and writes its folder atomically with its manifest (`artefacts`).
Inputs: `RLConfig` (the flags of `effort train <recipe>`) and the recipe's options; output: the
adapter folder. `Context` (context.py) is what a recipe reads besides the trainer.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from effort_server.contract.manifest import model_hash

from .artefacts import LOG_KEYS, append_jsonl, package_version, plot_curves, read_jsonl, save_adapter, staged_folder
from .context import Context
from .rollouts import Rollout, group_keep_mask, parse_rollout

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
LR_SCHEDULES = {
    "constant": "constant_with_warmup",
    "linear": "linear",
    "cosine": "cosine",
}  # --lr-schedule → transformers'


class TrainError(ValueError):
    """Bad input to a training command (reported as one line, exit 2)."""


@dataclass
class RLConfig:
    """Options every recipe shares (`effort train <recipe> --help`)."""

    # the flags `effort ... --help` lists (all of them with --help-all)
    HELP_MAIN = (
        "model",
        "task",
        "out",
        "name",
        "force",
        "resume",
        "quick",
        "max_steps",
        "minutes",
        "lr",
        "lora_r",
        "max_completion",
        "seed",
    )

    model: str = field(default="", metadata={"help": "base model folder (default: the embedded model)"})
    task: str = field(default="digits", metadata={"help": "task name (digits) or a JSONL file with question/answer"})
    out: str = field(default="", metadata={"help": "adapter folder to write (default: adapters/<name>)"})
    name: str = field(default="", metadata={"help": "adapter name served by the server (default: the recipe)"})
    run_dir: str = field(default="", metadata={"help": "checkpoints, logs and rollouts (default: runs/<name>)"})
    force: bool = field(default=False, metadata={"help": "replace an existing adapter folder / run folder"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --run-dir"})
    quick: bool = field(default=False, metadata={"help": "a few tiny steps, no evaluation (tests, smoke checks)"})
    n_prompts: int = field(default=1024, metadata={"help": "training prompts drawn from the task's train split"})
    prompts_per_step: int = field(default=8, metadata={"help": "prompts per optimiser step"})
    generations: int = field(default=8, metadata={"help": "rollouts per prompt (the GRPO group)"})
    max_steps: int = field(default=160, metadata={"help": "optimiser steps"})
    minutes: float = field(
        default=15.0,
        metadata={
            "help": "wall-clock cap on preparation + training (then checkpointed and stopped; the evaluation adds 1-3 min)"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "learning rate (peak, after a short warm-up)"})
    lr_schedule: str = field(
        default="constant",
        metadata={"help": "after the warm-up: constant, linear or cosine (down to 0 at --max-steps)"},
    )
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_targets: str = field(default=LORA_TARGETS, metadata={"help": "comma list of module names to adapt"})
    temperature: float = field(default=1.0, metadata={"help": "rollout temperature"})
    max_completion: int = field(
        default=0, metadata={"help": "rollout token cap, DLER's limit L (0 = the recipe's default)"}
    )
    beta: float = field(default=0.04, metadata={"help": "KL coefficient to the base (0 = no reference pass)"})
    epsilon: float = field(default=0.2, metadata={"help": "PPO clip, lower side"})
    epsilon_high: float = field(default=0.28, metadata={"help": "PPO clip, upper side (clip-higher)"})
    no_dynamic_sampling: bool = field(
        default=False, metadata={"help": "keep zero-variance prompt groups in the loss (ablation)"}
    )
    save_every: int = field(default=20, metadata={"help": "checkpoint interval in steps"})
    eval_n: int = field(
        default=500, metadata={"help": "held-out prompts evaluated through vLLM after training (0 = skip)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=2, metadata={"help": "torch threads"})

    def __post_init__(self):
        for k in ("n_prompts", "prompts_per_step", "generations", "max_steps", "save_every", "lora_r", "threads"):
            if getattr(self, k) < 1:
                raise TrainError(f"--{k.replace('_', '-')} must be >= 1")
        if self.generations < 2:
            raise TrainError("--generations must be >= 2 (GRPO compares rollouts of one prompt)")
        if self.minutes <= 0 or self.lr <= 0 or self.temperature <= 0:
            raise TrainError("--minutes, --lr and --temperature must be positive")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if self.max_completion < 0 or self.eval_n < 0 or self.beta < 0:
            raise TrainError("--max-completion, --eval-n and --beta must be >= 0")
        if self.quick:  # seconds, not minutes: the tests' smoke run of every recipe; flags given explicitly win
            quick = dict(
                n_prompts=8, prompts_per_step=2, generations=4, max_steps=2, save_every=1, eval_n=0, warmup_steps=0
            )
            defaults = {f.name: f.default for f in fields(self)}
            for k, v in quick.items():
                if getattr(self, k) == defaults[k]:
                    setattr(self, k, v)


# --- the trainer ---------------------------------------------------------------------------
def _trainer_class():
    import torch
    from trl import GRPOTrainer

    class EffortGRPOTrainer(GRPOTrainer):
        """GRPO with dynamic sampling and the recipe's per-step metrics."""

        recipe: "Recipe"
        dynamic_sampling: bool = True

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return out
            rewards, mode = self.recipe.last_rewards, "train"
            if self.dynamic_sampling and len(rewards) == out["completion_mask"].shape[0]:
                keep = torch.tensor(
                    group_keep_mask(rewards, self.num_generations),
                    dtype=out["completion_mask"].dtype,
                    device=out["completion_mask"].device,
                )
                out["completion_mask"] = out["completion_mask"] * keep[:, None]
                out["num_items_in_batch"] = out["completion_mask"].sum()
                self._metrics[mode]["groups_dropped"].append(1.0 - keep.float().mean().item())
            for k, v in self.recipe.last_metrics.items():
                self._metrics[mode][k].append(v)
            return out

    return EffortGRPOTrainer


class Recipe:
    """What a recipe module provides. Subclasses override the marked methods."""

    kind = "other"
    control = None  # effort_server.contract.manifest.Control for prompt-controlled effort (e1)
    evaluator = None  # a vLLM Evaluator the recipe opened in prepare(); the evaluation reuses it
    reserve_s = 0.0  # seconds of the --minutes cap kept for after_grpo()
    Options = None  # a dataclass of the recipe's own options: flags of `effort train <recipe>`, in hyper

    @classmethod
    def module_doc(cls) -> str:
        import sys

        return (sys.modules[cls.__module__].__doc__ or "").strip()

    @classmethod
    def default_cap(cls, full_effort_tokens: int, options=None) -> int:
        """Rollout token cap when --max-completion is not given: room for twice the base's
        mean full-effort reasoning (its long prompts run ~1.5× the mean) and the answer."""
        return 2 * full_effort_tokens + 16

    def __init__(self, cfg: RLConfig, ctx: "Context", options=None):
        self.cfg, self.ctx = cfg, ctx
        self.options = options if options is not None else (self.Options() if self.Options else None)
        for f in fields(self.options) if self.options is not None else ():
            setattr(self, f.name, getattr(self.options, f.name))
        self.last_rewards: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self.extra_metrics: dict[str, float] = {}  # set by reward(); logged per step
        self.rollout_sink: Callable[[list[dict]], None] = lambda rows: None

    # -- override ---------------------------------------------------------------------------
    def rows(self, problems) -> list[dict]:
        """Dataset rows: at least ``prompt`` (chat-templated text), ``prompt_id``; ``effort`` optional."""
        return [{"prompt": self.ctx.render(p.question), "prompt_id": p.id, "effort": 1.0} for p in problems]

    def prepare(self, problems, log=print) -> None:
        """Run once before training (e.g. measure reference lengths); `ctx.model` is the
        peft model with a fresh LoRA."""

    def reward(self, rollouts: list[Rollout]) -> list[float]:
        raise NotImplementedError

    def after_grpo(self, problems, log=print) -> None:
        """Run once after GRPO, before the adapter is saved (e1: its anchor); `ctx.model` is the
        trained peft model."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def hyper(self) -> dict:
        return {}

    def finish(self, adapter_dir: Path, evaluator) -> dict:
        """After training, with the adapter saved: extra evaluation / calibration for the manifest."""
        return {}

    # -- shared -----------------------------------------------------------------------------
    def reward_func(self):
        recipe = self

        def effort_reward(prompts, completions, completion_ids, trainer_state=None, prompt_id=None, effort=None, **kw):
            cap = recipe.ctx.max_completion
            effs = effort or [1.0] * len(completion_ids)
            rolls = [
                parse_rollout(
                    ids,
                    recipe.ctx.problems[pid],
                    recipe.ctx.task,
                    recipe.ctx.tokenizer,
                    recipe.ctx.markers,
                    cap,
                    float(e),
                )
                for ids, pid, e in zip(completion_ids, prompt_id, effs)
            ]
            rewards = [float(r) for r in recipe.reward(rolls)]
            recipe.last_rewards = rewards
            step = int(trainer_state.global_step) if trainer_state is not None else 0
            n = len(rolls)
            recipe.last_metrics = {
                "accuracy": sum(r.correct for r in rolls) / n,
                "mean_reasoning": sum(r.reasoning_tokens for r in rolls) / n,
                "truncated": sum(r.truncated for r in rolls) / n,
                **recipe.extra_metrics,
            }
            probs = recipe.ctx.problems
            recipe.rollout_sink(
                [
                    {
                        "step": step,
                        **asdict(r),
                        "reward": w,
                        "difficulty": probs[r.prompt_id].difficulty,
                        "question": probs[r.prompt_id].question,
                    }
                    for r, w in zip(rolls, rewards)
                ]
            )
            return rewards

        return effort_reward


def _callbacks(recipe: Recipe, run_dir: Path, cfg: RLConfig, t_start: float, prior_wall: float, title: str):
    from transformers import TrainerCallback

    log_path = run_dir / "log.jsonl"

    class EffortCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs and "reward" not in logs:
                return
            row = {"step": state.global_step, "wall_s": round(prior_wall + time.time() - t_start, 1)}
            for k, src in [*LOG_KEYS.items(), *((k, k) for k in recipe.extra_metrics)]:
                if src in logs:
                    row[k] = round(float(logs[src]), 5)
            append_jsonl(log_path, [row])

        def on_step_end(self, args, state, control, **kw):
            if prior_wall + time.time() - t_start > cfg.minutes * 60 - recipe.reserve_s:
                control.should_training_stop = True
                control.should_save = True

        def on_save(self, args, state, control, **kw):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                payload = {
                    "recipe": recipe.state(),
                    "wall_s": prior_wall + time.time() - t_start,
                    "step": state.global_step,
                }
                tmp = ckpt / "effort_state.json.tmp"
                tmp.write_text(json.dumps(payload))
                tmp.replace(ckpt / "effort_state.json")

        def on_train_end(self, args, state, control, **kw):
            rows = read_jsonl(log_path)
            if rows:
                plot_curves(rows, run_dir / "curves.png", title)

    return [EffortCallback()]


def _check_targets(model, targets: list[str]) -> None:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise TrainError(
            f"LoRA target module(s) {', '.join(missing)} not found in the model "
            f"(it has e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8])})"
        )


def _last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(
        (
            p
            for p in run_dir.glob("checkpoint-*")
            if (p / "trainer_state.json").exists() and (p / "effort_state.json").exists()
        ),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return ckpts[-1] if ckpts else None


def load_problems(task, n: int, seed: int):
    probs = task.problems("train", n, seed)
    bad = [p.id for p in probs if not str(p.answer).strip()]
    if bad:
        raise TrainError(
            f"{len(bad)} training problem(s) have no answer (e.g. id {bad[0]}); RL needs verifiable answers"
        )
    if not probs:
        raise TrainError("the task has no training problems")
    return probs


def train_recipe(recipe_cls: type[Recipe], cfg: RLConfig, log=print, options=None) -> Path:
    """Train, evaluate and write the adapter folder atomically. Returns its path."""
    from effort_server.server.engine import default_model, portable_path
    from effort_server.server.registry import NAME_RE
    from effort_server.training.tasks import load_task

    from effort_server.contract.manifest import AdapterManifest, ModelManifest

    t_start = time.time()
    name = cfg.name or recipe_cls.kind
    if not NAME_RE.match(name):
        raise TrainError(f"adapter name {name!r} must match {NAME_RE.pattern}")
    out = Path(cfg.out or Path("adapters") / name)
    run_dir = Path(cfg.run_dir or Path("runs") / name)
    if out.exists() and not cfg.force:
        raise TrainError(f"output folder {out} exists; pass --force to replace it")
    if cfg.resume:
        ckpt = _last_checkpoint(run_dir)
        if ckpt is None:
            raise TrainError(f"--resume: no checkpoint in {run_dir}")
    else:
        ckpt = None
        if run_dir.exists() and any(run_dir.iterdir()):
            if not cfg.force:
                raise TrainError(
                    f"run folder {run_dir} has a previous run; pass --resume to continue it or --force to start over"
                )
            shutil.rmtree(run_dir)
    model_path = cfg.model or default_model()
    if not Path(model_path, "config.json").is_file():
        raise TrainError(f"model folder not found or not a model: {model_path}")
    task = load_task(cfg.task)
    problems = load_problems(task, cfg.n_prompts, cfg.seed)
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]

    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from effort_server.contract.markers import Markers

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    _check_targets(model, targets)
    try:
        mm = ModelManifest.read(model_path)
        think, full = (mm.think_start, mm.think_end), mm.default_full_effort_tokens
    except Exception:
        think, full = ("<think>", "</think>"), 512
    markers = Markers.from_tokenizer(tok, *think)
    cap = cfg.max_completion or recipe_cls.default_cap(full, options)
    peft_cfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, peft_cfg)  # the recipe's prepare() may warm the LoRA up
    ctx = Context(
        task=task,
        problems={p.id: p for p in problems},
        tokenizer=tok,
        markers=markers,
        max_completion=cap,
        model=model,
    )
    recipe = recipe_cls(cfg, ctx, options)
    run_dir.mkdir(parents=True, exist_ok=True)
    rollouts_path = run_dir / "rollouts.jsonl"
    log_path = run_dir / "log.jsonl"
    prior_wall = 0.0
    if ckpt is not None:
        st = json.loads((ckpt / "effort_state.json").read_text()) if (ckpt / "effort_state.json").exists() else {}
        recipe.load_state(st.get("recipe", {}))
        prior_wall = float(st.get("wall_s", 0.0))
        step = int(ckpt.name.split("-")[-1])
        # keep what the checkpoint had seen: rollouts generated before step `step`, logs up to it
        append_jsonl(rollouts_path, [r for r in read_jsonl(rollouts_path) if r["step"] < step], mode="w")
        append_jsonl(log_path, [r for r in read_jsonl(log_path) if r["step"] <= step], mode="w")
        log(f"resuming from {ckpt} (step {step}, {prior_wall / 60:.1f} min trained before)")
        start = run_dir / "start-adapter" / "adapter_model.safetensors"
        if start.is_file():  # the KL reference is a copy of the adapter as GRPO first saw it (e1's warm-up)
            set_peft_model_state_dict(model, load_file(str(start)))
    else:
        log(
            f"{recipe_cls.kind}: {len(problems)} prompts, {cfg.prompts_per_step}x{cfg.generations} rollouts/step, "
            f"cap {cap} tokens, up to {cfg.max_steps} steps / {cfg.minutes:g} min"
        )
        recipe.prepare(problems, log)
        model.save_pretrained(str(run_dir / "start-adapter"))  # what GRPO starts from (and its KL reference)
    recipe.rollout_sink = lambda rows: append_jsonl(rollouts_path, rows)

    from datasets import Dataset

    rows = recipe.rows(problems)
    ds = Dataset.from_list(rows)
    args = GRPOConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=cfg.prompts_per_step * cfg.generations,
        num_generations=cfg.generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        max_completion_length=cap,
        temperature=cfg.temperature,
        top_p=1.0,
        learning_rate=cfg.lr,
        lr_scheduler_type=LR_SCHEDULES[cfg.lr_schedule],
        warmup_steps=cfg.warmup_steps,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type="dapo",
        scale_rewards="batch",
        mask_truncated_completions=False,
        logging_steps=1,
        save_steps=cfg.save_every,
        save_total_limit=2,
        max_steps=cfg.max_steps,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to=[],
        seed=cfg.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=False,
        save_only_model=False,
        shuffle_dataset=True,
    )
    title = f"{name} ({recipe_cls.kind}) on {Path(model_path).name}"
    trainer = _trainer_class()(
        model=model,
        reward_funcs=[recipe.reward_func()],
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=_callbacks(recipe, run_dir, cfg, t_start, prior_wall, title),
    )
    trainer.recipe = recipe
    trainer.dynamic_sampling = not cfg.no_dynamic_sampling
    if ckpt is not None and step >= cfg.max_steps:
        # the run had taken all its steps (it stopped after them: in after_grpo or the evaluation);
        # the trainer, resumed there, would take one step more before it checks max_steps
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        log(f"{ckpt.name} is at --max-steps {cfg.max_steps}: no more steps")
        steps = step
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        steps = trainer.state.global_step
    recipe.after_grpo(problems, log)
    wall = prior_wall + time.time() - t_start

    # -- the adapter, staged in a hidden sibling folder, then renamed into place -------------
    with staged_folder(out) as stage:
        save_adapter(trainer.model, stage, selected_adapters=["default"])
        for f in ("log.jsonl", "curves.png"):
            if (run_dir / f).exists():
                shutil.copy2(run_dir / f, stage / ("training_" + f if f == "log.jsonl" else f))
        with open(rollouts_path, "rb") as src, gzip.open(stage / "rollouts.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        manifest = AdapterManifest(
            name=name,
            kind=recipe_cls.kind,
            base_model=portable_path(model_path),
            base_model_hash=model_hash(model_path),
            think_start=think[0],
            think_end=think[1],
            control=recipe.control or AdapterManifest.model_fields["control"].default_factory(),
            training={
                "recipe": recipe_cls.kind,
                "task": cfg.task,
                "n_prompts": len(problems),
                "steps": steps,
                "seed": cfg.seed,
                "wall_time_s": round(wall, 1),
                "hyper": {**_hyper(cfg), **recipe.hyper(), **(asdict(recipe.options) if recipe.options else {})},
                "max_completion": cap,
                "trl": package_version("trl"),
                "peft": package_version("peft"),
            },
        )
        manifest.write(stage)
        if cfg.eval_n > 0:
            evaluation = evaluate_adapter(stage, recipe, cfg, model_path, log)
            manifest = AdapterManifest.read(stage)  # finish() may have updated the control
            manifest.evaluation = evaluation
            manifest.write(stage)
    log(f"wrote {out} ({steps} steps, {wall / 60:.1f} min)")
    return out


def evaluate_adapter(folder: Path, recipe: Recipe, cfg: RLConfig, model_path: str, log) -> dict:
    """Held-out accuracy and reasoning length through vLLM, plus the recipe's own measures."""
    from effort_server.training.evaluate import Evaluator

    from effort_server.contract.manifest import AdapterManifest

    ev = recipe.evaluator or Evaluator(model_path)  # one engine per process (e1 opens it to sample its warm-up)
    extra = recipe.finish(folder, ev) or {}  # may rewrite the manifest (e1's calibration)
    res = eval_full(ev, folder, AdapterManifest.read(folder), recipe.ctx.task, cfg.task, cfg.eval_n, log)
    return {**res, **extra}


def eval_full(ev, folder: Path, manifest, task, task_name: str, n: int, log=print) -> dict:
    """The adapter in `folder` at full effort on `n` held-out test prompts, by difficulty."""
    from effort_server.server.registry import Adapter
    from effort_server.training.evaluate import summarize

    problems = task.problems("test", n, 0)
    rows = ev.generate(
        problems, task, Adapter(manifest.name, folder.resolve(), manifest, lora_id=1), [None] * len(problems)
    )
    full = {"all": summarize(rows)}
    for b in sorted({r["bucket"] for r in rows}):
        full[b] = summarize([r for r in rows if r["bucket"] == b])
    log(
        f"eval: accuracy {100 * full['all']['accuracy']:.1f}%, mean reasoning {full['all']['mean_reasoning']:.1f} tokens"
    )
    return {"eval_set": f"{task_name} test split, {len(problems)} prompts, seed 0", "full": full}


def _hyper(cfg: RLConfig) -> dict:
    keep = (
        "prompts_per_step",
        "generations",
        "lr",
        "lr_schedule",
        "lora_r",
        "lora_alpha",
        "lora_targets",
        "temperature",
        "beta",
        "epsilon",
        "epsilon_high",
        "no_dynamic_sampling",
        "warmup_steps",
    )
    return {k: getattr(cfg, k) for k in keep}
