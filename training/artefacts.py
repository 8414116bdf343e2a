"""A run's files: the JSONL logs, the curves PNG, and the adapter folder written atomically.

`staged_folder` gives a hidden folder beside the target, renamed into place only when the block
succeeds (a reader never sees a half-written adapter); `save_adapter` writes peft's files
deterministically; `package_version` records what trained it.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def append_jsonl(path: Path, rows: list[dict], mode: str = "a") -> None:
    with path.open(mode) as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path: Path) -> list[dict]:
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


def package_version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:
        return "?"
