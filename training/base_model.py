"""`effort train base`: build the embedded tiny reasoning model from scratch.

1. A Qwen2-style byte-level BPE tokenizer with ``<think>`` / ``</think>`` as single added tokens
   and a ChatML chat template (transformers and vLLM produce the same ids as training).
2. A ~1M-parameter ``Qwen2ForCausalLM`` (head size 32: vLLM's CPU attention rejects 16).
3. Supervised next-token training on the digits task's styled chains of thought, loss on the
   assistant turn only, for a budget of tokens with a wall-clock cap.
Output: a model folder loadable by transformers, peft and vLLM, with its manifest. How the
defaults were chosen: docs/embedded-model.md and docs/LOG.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tasks.digits import RECHECK_PASSES

THINK_START, THINK_END = "<think>", "</think>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer: digits split one by one, letters grouped with one leading space.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class BaseModelConfig:
    # the flags `effort ... --help` lists (all of them with --help-all)
    HELP_MAIN = ("out", "minutes", "tokens", "max_steps", "init_from", "styles", "seed", "force")

    out: str = field(default="models/effort-tiny", metadata={"help": "output folder"})
    minutes: float = field(
        default=18.0,
        metadata={
            "help": "wall-clock cap on training (the schedule ends by tokens or by this, whichever comes first)"
        },
    )
    tokens: float = field(
        default=6e6, metadata={"help": "training budget in (non-padding) tokens; about 17 minutes on 2 cores"}
    )
    max_steps: int = field(default=5000, metadata={"help": "upper bound on optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    lr: float = field(default=1.5e-3, metadata={"help": "peak learning rate (10% warm-up, cosine to 10%)"})
    warmup: float = field(default=0.1, metadata={"help": "warm-up fraction of the schedule"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=2, metadata={"help": "torch threads (measured: 2 beats 1 on an idle 2-core box)"})
    hidden: int = field(default=128, metadata={"help": "hidden size"})
    layers: int = field(default=4, metadata={"help": "transformer layers"})
    heads: int = field(default=4, metadata={"help": "attention heads (head size = hidden / heads >= 32)"})
    kv_heads: int = field(
        default=4, metadata={"help": "key/value heads (4 = no grouped-query sharing: more reliable copies)"}
    )
    vocab_size: int = field(default=384, metadata={"help": "tokenizer vocabulary size (BPE target)"})
    max_len: int = field(default=1024, metadata={"help": "max positions (prompt + completion)"})
    init_from: str = field(
        default="",
        metadata={"help": "continue from this model folder (its tokenizer too) instead of starting from scratch"},
    )
    curriculum_start: int = field(default=4, metadata={"help": "max digits per prompt at the start of training"})
    curriculum_until: float = field(
        default=0.6, metadata={"help": "fraction of training after which all lengths (2-16) are used"}
    )
    styles: str = field(
        default="",
        metadata={
            "help": "reasoning-style mix of the supervised data, e.g. verbose=0.62,plain=0.22 (default: the task's STYLE_MIX)"
        },
    )
    recheck_passes: int = field(default=RECHECK_PASSES, metadata={"help": "re-check passes of the verbose style"})
    force: bool = field(default=False, metadata={"help": "overwrite an existing output folder"})

    def __post_init__(self):
        if self.hidden % self.heads or self.hidden // self.heads < 32:
            raise ValueError("hidden / heads must be an integer >= 32 (vLLM CPU attention needs head size >= 32)")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")
        if self.minutes <= 0 or self.tokens <= 0 or self.max_steps <= 0 or self.batch_size <= 0:
            raise ValueError("minutes, tokens, max_steps and batch_size must be positive")
        if not 0 < self.warmup < 1:
            raise ValueError("warmup must be in (0, 1)")
        if not 2 <= self.curriculum_start <= 16 or not 0 <= self.curriculum_until <= 1:
            raise ValueError("curriculum_start must be in 2..16 and curriculum_until in [0, 1]")
        if self.recheck_passes < 1:
            raise ValueError("recheck_passes must be >= 1")
        if self.styles:
            from .tasks.digits import parse_styles

            parse_styles(self.styles)


def render_prompt(question: str) -> str:
    """The chat-templated prompt for one user question (same text the tokenizer's template makes)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def render_completion(thinking: str, answer: str) -> str:
    return f"{THINK_START}{thinking}{THINK_END}{answer}<|im_end|>"


def build_tokenizer(corpus: list[str], vocab_size: int):
    """Train the byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL) - 2,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in (THINK_START, THINK_END)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _corpus(task, rng: random.Random, n: int) -> list[str]:
    out = []
    styles = list(task.styles)
    for i in range(n):
        style = styles[i % len(styles)]
        q, t, a = task.sft_example(rng, style=None if style == "cut" else style)
        out.append(render_prompt(q).replace("<|im_start|>", "").replace("<|im_end|>", "") + t + a)
    # chat words users and the e1 control will use
    out += ["system user assistant effort check ok answer Answer: \\boxed{} Think for effort 0.5 of full."] * 50
    return out


def _batches(tok, task, rng, batch_size: int, pad_id: int, max_digits=lambda: None, pool: int = 4):
    """Endless (input_ids, labels, attention_mask) batches. `pool` batches' worth of examples
    are drawn at once and sorted by length, so each batch pads little (2x fewer wasted tokens)
    while the examples stay an unbiased sample. `max_digits()` is the curriculum's current cap."""
    while True:
        rows = []
        cap = max_digits()
        for _ in range(batch_size * pool):
            q, t, a = task.sft_example(rng, max_digits=cap)
            p = tok(render_prompt(q), add_special_tokens=False)["input_ids"]
            c = tok(render_completion(t, a), add_special_tokens=False)["input_ids"]
            rows.append((p + c, [-100] * len(p) + c))
        rows.sort(key=lambda r: len(r[0]))
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield _pad([r[0] for r in chunk], [r[1] for r in chunk], pad_id)


def _pad(ids, labels, pad_id):
    import torch

    batch_size = len(ids)
    width = max(map(len, ids))
    x = torch.full((batch_size, width), pad_id)
    y = torch.full((batch_size, width), -100)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids, labels)):
        x[i, : len(a)] = torch.tensor(a)
        y[i, : len(b)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return x, y, mask


def _log(msg: str) -> None:
    print(msg, flush=True)


def _new_model(cfg: BaseModelConfig, task):
    """A fresh tokenizer (trained on the task's text) and a randomly initialised Qwen2."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(_corpus(task, random.Random(cfg.seed + 1), 4000), cfg.vocab_size)
    config = Qwen2Config(
        vocab_size=int(math.ceil(len(tok) / 64) * 64),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.hidden * 4,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_len,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    return tok, Qwen2ForCausalLM(config), config


def fit(
    cfg: BaseModelConfig, model, tok, task, rng: random.Random, budget_s: float, device: str = "cpu", log=_log
) -> tuple[int, int]:
    """The supervised loop: cfg.tokens (non-padding) tokens or `budget_s` seconds, whichever
    comes first, on a warm-up + cosine schedule. Returns (steps, tokens)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    progress = 0.0
    # Length curriculum: the copy and running-sum circuits are length-generic but slow to form
    # (a long plateau at chance on those tokens); short chains early give more examples per
    # second while they form. The cap grows from curriculum_start to the full range.
    full_at = max(1e-9, cfg.curriculum_until)
    start = min(cfg.curriculum_start, task.max_digits)

    def cap() -> int:
        f = min(1.0, progress / full_at)
        return round(start + f * (task.max_digits - start))

    batches = _batches(tok, task, rng, cfg.batch_size, tok.pad_token_id, max_digits=cap)
    step, tokens, t_train = 0, 0, time.time()
    model.train()
    while progress < 1.0 and step < cfg.max_steps:
        # the schedule runs on tokens or on the clock, whichever is ahead, so a slow or busy
        # machine still ends on time with a fully decayed learning rate
        progress = max(tokens / cfg.tokens, (time.time() - t_train) / budget_s)
        lr = (
            cfg.lr * max(progress, 1e-3) / cfg.warmup
            if progress < cfg.warmup
            else cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - cfg.warmup) / (1 - cfg.warmup))))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, mask = (t.to(device) for t in next(batches))
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(mask.sum())
        step += 1
        if step % 50 == 0:
            el = time.time() - t_train
            log(
                f"step {step} tokens {tokens / 1e6:.2f}M/{cfg.tokens / 1e6:g}M loss {loss.item():.4f} lr {lr:.2e} "
                f"max digits {cap()} {tokens / el:,.0f} tok/s {el / 60:.1f} min"
            )
    return step, tokens


def train_base(cfg: BaseModelConfig, log=_log) -> Path:
    import torch

    from .tasks import DigitsTask
    from .tasks.digits import parse_styles

    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    task = DigitsTask(styles=parse_styles(cfg.styles) if cfg.styles else None, recheck_passes=cfg.recheck_passes)
    t0 = time.time()
    prior: dict = {}
    if cfg.init_from:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from effort_server.contract.manifest import ModelManifest

        tok = AutoTokenizer.from_pretrained(cfg.init_from)
        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        config = model.config
        prior = ModelManifest.read(cfg.init_from).training
        log(f"continuing from {cfg.init_from} ({prior.get('steps', '?')} steps before)")
    else:
        tok, model, config = _new_model(cfg, task)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tokenizer: {len(tok)} tokens; model: {n_params / 1e6:.2f}M parameters")
    budget_s = cfg.minutes * 60 - (time.time() - t0) - 30  # keep 30 s for saving
    step, tokens = fit(cfg, model, tok, task, rng, budget_s, log=log)
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if cfg.init_from:  # the tokenizer files verbatim: a re-save through transformers rewrites them
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if Path(cfg.init_from, f).is_file():
                shutil.copy2(Path(cfg.init_from, f), tmp / f)
    gen = {
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "max_new_tokens": 512,
    }
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _patch_tokenizer_config(tmp)
    from effort_server.contract.manifest import ModelManifest

    ModelManifest(
        name=out.name,
        think_start=THINK_START,
        think_end=THINK_END,
        task="digits",
        default_full_effort_tokens=80,
        training={
            "recipe": "sft-from-scratch",
            "steps": step + int(prior.get("steps", 0)),
            "stages": [
                *prior.get("stages", [prior] if prior else []),
                {
                    "steps": step,
                    "tokens": tokens,
                    "wall_time_s": round(time.time() - t0, 1),
                    "lr": cfg.lr,
                    "curriculum": [cfg.curriculum_start, cfg.curriculum_until],
                    "style_mix": task.styles,
                    "recheck_passes": task.recheck_passes,
                    "init_from": bool(cfg.init_from),
                },
            ],
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "tokens": tokens,
            "warmup": cfg.warmup,
            "seed": cfg.seed,
            "wall_time_s": round(float(prior.get("wall_time_s", 0)) + time.time() - t0, 1),
            "parameters": n_params,
            "style_mix": task.styles,
            "recheck_passes": task.recheck_passes,
            "curriculum": [cfg.curriculum_start, cfg.curriculum_until],
        },
    ).write(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"saved {out} ({step} steps, {(time.time() - t0) / 60:.1f} min)")
    return out


def _patch_tokenizer_config(folder: Path) -> None:
    """Name the tokenizer class Qwen2Tokenizer so every loader builds the same tokenizer."""
    p = folder / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg.setdefault("model_max_length", 1024)
    p.write_text(json.dumps(cfg, indent=2))
