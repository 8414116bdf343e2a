"""`effort merge`: update-selective merging of a trained adapter (DLER's recipe for keeping the
base's accuracy when RL data is scarce), written as a new, servable LoRA adapter.

For every adapted weight matrix W with LoRA update ΔW = B·A·(α/r):
1. keep only the most-changed part of the update: the `keep` fraction of ΔW's entries with the
   largest magnitude (per matrix), the rest reverted to the base (set to 0);
2. scale what is kept by `scale`;
3. refactor the sparse update into a LoRA of rank `rank` by truncated SVD (B' = U·S, A' = Vᵀ,
   α' = r' so the scaling is 1), so vLLM serves it like any adapter.
With keep = 1, scale = 1 and rank ≥ the source rank the result reproduces the source exactly
(tested). The adapter folder is staged under a hidden name and renamed into place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MergeConfig:
    adapter: str = field(
        default="", metadata={"help": "source adapter: a folder or a name registered in --adapter-dir"}
    )
    adapter_dir: str = field(
        default="", metadata={"help": "folder of registered adapters (default: the repo's adapters/)"}
    )
    keep: float = field(default=0.3, metadata={"help": "fraction of each update's entries kept (largest magnitude)"})
    scale: float = field(default=1.0, metadata={"help": "factor on the kept update"})
    rank: int = field(default=0, metadata={"help": "LoRA rank of the result (0 = twice the source rank, at most 16)"})
    name: str = field(default="", metadata={"help": "adapter name (default: <source>-merged)"})
    out: str = field(default="", metadata={"help": "output folder (default: <adapter-dir>/<name>)"})
    force: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    eval_n: int = field(default=500, metadata={"help": "held-out prompts evaluated through vLLM (0 = skip)"})

    def __post_init__(self):
        if not self.adapter:
            raise ValueError("--adapter is required")
        if not 0 < self.keep <= 1:
            raise ValueError("--keep must be in (0, 1]")
        if self.scale <= 0 or self.rank < 0 or self.eval_n < 0:
            raise ValueError("--scale must be > 0, --rank and --eval-n >= 0")


def select_update(delta, keep: float):
    """ΔW with all but its `keep` fraction of largest-magnitude entries zeroed."""
    import torch

    if keep >= 1:
        return delta.clone()
    k = max(1, math.ceil(keep * delta.numel()))
    thresh = torch.topk(delta.abs().flatten(), k).values[-1]
    return torch.where(delta.abs() >= thresh, delta, torch.zeros_like(delta))


def to_lora(delta, rank: int):
    """(A, B) with B @ A the best rank-`rank` approximation of `delta`."""
    import torch

    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    b = (u[:, :r] * s[:r]).float()
    a = vh[:r].float()
    if r < rank:  # pad to the declared rank with zero components
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], 1)
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], 0)
    return a.contiguous(), b.contiguous()


def lora_deltas(peft_model) -> dict[str, "object"]:
    """Module name → ΔW of the active adapter, for every LoRA layer."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            out[name] = mod.get_delta_weight("default").detach()
    return out


def merge(cfg: MergeConfig, log=print) -> Path:
    import torch
    from effort_server.training.artefacts import save_adapter, staged_folder
    from effort_server.training.evaluate import lookup_adapter
    from effort_server.training.rl import eval_full
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from effort_server.contract.manifest import AdapterManifest

    src = lookup_adapter(cfg.adapter, cfg.adapter_dir)
    if src is None:
        raise ValueError("--adapter must name an adapter, not 'base'")
    m = src.manifest
    name = cfg.name or f"{m.name}-merged"
    from effort_server.server.engine import default_adapter_dir

    out = Path(cfg.out or Path(cfg.adapter_dir or default_adapter_dir()) / name)
    if out.exists() and not cfg.force:
        raise FileExistsError(f"output folder {out} exists; pass --force to replace it")
    from effort_server.server.engine import resolve_path

    base_path = resolve_path(m.base_model)
    if not Path(base_path, "config.json").is_file():
        raise ValueError(f"the adapter's base model {base_path} is not a model folder")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_src = PeftModel.from_pretrained(base, str(src.path))
    src_cfg = peft_src.peft_config["default"]
    rank = cfg.rank or min(16, 2 * src_cfg.r)
    deltas = lora_deltas(peft_src)
    norms = {}
    kept = {}
    for mod_name, d in deltas.items():
        sel = select_update(d, cfg.keep) * cfg.scale
        kept[mod_name] = to_lora(sel, rank)
        norms[mod_name] = float(d.norm())
    base = peft_src.unload()  # the plain base again, without LoRA layers
    new = get_peft_model(
        base,
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            lora_dropout=0.0,
            target_modules=sorted(src_cfg.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    with torch.no_grad():
        for mod_name, mod in new.named_modules():
            if mod_name in kept:
                a, b = kept[mod_name]
                mod.lora_A["default"].weight.copy_(a)
                mod.lora_B["default"].weight.copy_(b)
    missing = set(deltas) - {n for n, _ in new.named_modules()}
    if missing:
        raise ValueError(f"merged adapter lost modules: {sorted(missing)[:3]}")
    with staged_folder(out) as stage:
        save_adapter(new, stage)
        manifest = AdapterManifest(
            name=name,
            kind="merged",
            base_model=m.base_model,
            base_model_hash=m.base_model_hash,
            think_start=m.think_start,
            think_end=m.think_end,
            control=m.control,
            training={
                "recipe": "update-selective merge",
                "source": m.name,
                "source_kind": m.kind,
                "keep": cfg.keep,
                "scale": cfg.scale,
                "rank": rank,
                "source_rank": src_cfg.r,
                "source_training": m.training,
            },
        )
        manifest.write(stage)
        if cfg.eval_n:
            from effort_server.training.evaluate import Evaluator
            from effort_server.training.tasks import load_task

            task_name = m.training.get("task", "digits")
            manifest.evaluation = eval_full(
                Evaluator(base_path), stage, manifest, load_task(task_name), task_name, cfg.eval_n, log
            )
            manifest.write(stage)
    log(f"wrote {out}: {len(kept)} matrices, keep {cfg.keep:g}, scale {cfg.scale:g}, rank {rank}")
    return out
