"""The machinery every RL recipe shares: TRL's ``GRPOTrainer`` + a peft LoRA, with

- one parse of each completion (`Rollout`: reasoning tokens by the server's own counter,
  truncation, correctness by the task's verifier) that every reward reads;
- dynamic sampling (`group_keep_mask`): prompt groups whose rewards are all equal carry no
  signal; their completions leave the loss (and its token normaliser) — TRL lacks this;
- a per-step JSONL log (reward, accuracy, mean length, entropy, fraction of groups dropped) and a
  PNG of the curves, the rollouts (prompt id, effort, length, correct) as JSONL, resumable
  checkpoints carrying the recipe's own running state, and a wall-clock cap;
- the adapter folder written atomically (a hidden staging folder renamed into place) with its
  manifest, after an evaluation through vLLM (the serving engine).

A recipe (``training/recipes/``) supplies the rewards, the prompt rows and its running state.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

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
    max_completion: int = field(default=0, metadata={"help": "rollout token cap (0 = the recipe's default)"})
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


# --- completions ---------------------------------------------------------------------------
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
    reserve_s = 0.0  # seconds of the --minutes cap kept for polish() after GRPO
    Options = None  # a dataclass of the recipe's own options: flags of `effort train <recipe>`, in hyper

    @classmethod
    def module_doc(cls) -> str:
        import sys

        return (sys.modules[cls.__module__].__doc__ or "").strip()

    @classmethod
    def default_cap(cls, full_effort_tokens: int) -> int:
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

    def polish(self, problems, log=print) -> None:
        """Run once after GRPO, before the adapter is saved (e1's anchor); `ctx.model` is the
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


@dataclass
class Context:
    """What recipes read: the task, problems by id, the tokenizer and the think markers."""

    task: Any
    problems: dict
    tokenizer: Any
    markers: Any
    max_completion: int
    model: Any = None  # the peft model being trained

    def render(self, content: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def greedy(
        self, problems, contents: list[str] | None = None, batch: int = 64, temperature: float = 0.0
    ) -> dict[str, tuple[Rollout, list[int]]]:
        """Per problem id: the greedy rollout of the current model (HF generate) and its ids
        (`temperature` > 0: one sample instead)."""
        import torch

        tok, model = self.tokenizer, self.model
        side = tok.padding_side
        tok.padding_side = "left"
        out: dict[str, tuple[Rollout, list[int]]] = {}
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(problems), batch):
                chunk = problems[i : i + batch]
                texts = [
                    self.render(c) for c in (contents[i : i + batch] if contents else [p.question for p in chunk])
                ]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    sampling = (
                        dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                        if temperature > 0
                        else dict(do_sample=False)
                    )
                    gen = model.generate(
                        **enc,
                        max_new_tokens=self.max_completion,
                        **sampling,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                for p, row in zip(chunk, gen[:, enc["input_ids"].shape[1] :].tolist()):
                    if tok.eos_token_id in row:
                        row = row[: row.index(tok.eos_token_id) + 1]
                    out[p.id] = (parse_rollout(row, p, self.task, tok, self.markers, self.max_completion), row)
        finally:
            tok.padding_side = side
            model.train(was_training)
        return out

    def sft(
        self,
        pairs: list[tuple],
        steps: int,
        lr: float = 1e-3,
        batch: int = 32,
        seed: int = 0,
        log=print,
        done=None,
        check_from: int = 0,
        check_every: int = 50,
    ) -> float:
        """Supervised steps on the trainable (LoRA) parameters: (prompt text, completion ids[,
        per-token weights]) → loss on the completion only, the weighted mean of the token losses
        (weights default to 1). Returns the last loss.

        `done(step)`, when given, is asked after step `check_from` and every `check_every` steps
        after it; training stops early when it returns True (`steps` is then the most taken)."""
        import torch
        from effort_server.training.base_model import _pad

        tok, model = self.tokenizer, self.model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = random.Random(seed)
        model.train()
        loss = torch.tensor(0.0)
        p_cache: dict[str, list[int]] = {}
        for step in range(steps):
            chunk = rng.sample(pairs, min(batch, len(pairs)))
            ids, labels, weights = [], [], []
            for prompt, completion, *w in chunk:
                p_ids = p_cache.setdefault(prompt, tok(prompt, add_special_tokens=False)["input_ids"])
                ids.append(p_ids + completion)
                labels.append([-100] * len(p_ids) + completion)
                weights.append([0.0] * len(p_ids) + list(w[0] if w else [1.0] * len(completion)))
            x, y, mask = _pad(ids, labels, tok.pad_token_id)
            wt = torch.zeros(x.shape)
            for i, w in enumerate(weights):
                wt[i, : len(w)] = torch.tensor(w)
            logits = model(input_ids=x.to(model.device), attention_mask=mask.to(model.device)).logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y[:, 1:].reshape(-1).to(model.device),
                ignore_index=-100,
                reduction="none",
            ).view(x.shape[0], -1)
            wt = wt[:, 1:].to(model.device)
            loss = (ce * wt).sum() / wt.sum().clamp_min(1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = step + 1
            if n % 20 == 0:
                log(f"warm-up step {n}/{steps}: loss {loss.item():.4f}")
            if done is not None and n >= check_from and (n - check_from) % check_every == 0 and n < steps:
                if done(n):
                    break
        return float(loss.item())


# --- files ---------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict], mode: str = "a") -> None:
    with path.open(mode) as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


LOG_KEYS = {
    "reward": "reward",
    "accuracy": "accuracy",
    "mean_length": "completions/mean_length",
    "mean_reasoning": "mean_reasoning",
    "entropy": "entropy",
    "groups_dropped": "groups_dropped",
    "truncated": "truncated",
    "kl": "kl",
    "loss": "loss",
    "lr": "learning_rate",
}


def plot_curves(log_rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", "accuracy"), ("mean_reasoning", "mean_length"), ("entropy",), ("groups_dropped", "truncated")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.2), dpi=100)
    steps = [r["step"] for r in log_rows]
    for ax, keys in zip(axes, panels):
        for k in keys:
            ys = [r.get(k) for r in log_rows]
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


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
            _write_jsonl(log_path, [row])

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
            rows = _read_jsonl(log_path)
            if rows:
                plot_curves(rows, run_dir / "curves.png", title)

    return [EffortCallback()]


@contextmanager
def staged_folder(out: Path):
    """A hidden staging folder beside `out`, renamed into place when the block succeeds and
    removed when it fails: a reader never sees a half-written adapter."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        yield stage
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            shutil.rmtree(trash)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_adapter(model, folder: Path, **kw) -> None:
    """`model.save_pretrained` without peft's boilerplate model card, and with the LoRA target
    modules sorted (peft writes them from a set, so the same run wrote them in another order
    each time)."""
    model.save_pretrained(str(folder), **kw)
    (folder / "README.md").unlink(missing_ok=True)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


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
    cap = cfg.max_completion or recipe_cls.default_cap(full)
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
        _write_jsonl(rollouts_path, [r for r in _read_jsonl(rollouts_path) if r["step"] < step], mode="w")
        _write_jsonl(log_path, [r for r in _read_jsonl(log_path) if r["step"] <= step], mode="w")
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
    recipe.rollout_sink = lambda rows: _write_jsonl(rollouts_path, rows)

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
        # the run had taken all its steps (it stopped after them: in the polish or the evaluation);
        # the trainer, resumed there, would take one step more before it checks max_steps
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        log(f"{ckpt.name} is at --max-steps {cfg.max_steps}: no more steps")
        steps = step
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        steps = trainer.state.global_step
    recipe.polish(problems, log)
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
                "trl": _version("trl"),
                "peft": _version("peft"),
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


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:
        return "?"


def model_hash(model_path: str | Path) -> str:
    """sha256 (first 16 hex) of the model's weights file(s): which base an adapter was trained on."""
    import hashlib

    h = hashlib.sha256()
    files = sorted(Path(model_path).glob("*.safetensors"))
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16] if files else "unknown"
