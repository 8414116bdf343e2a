"""Sweep embedded-model training recipes at a fixed *token* budget (what 2 CPU cores process in
`effort train base`'s wall-clock budget), many configurations side by side, then greedy accuracy
by difficulty. Used to choose `BaseModelConfig`'s defaults; it runs on CPU or on a GPU
(``--device cuda``), where a configuration takes seconds instead of 17 minutes.

    python scripts/sweep_base.py --tokens 6e6 --device cuda --out sweep.jsonl A B C
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effort_server.training import base_model as bm  # noqa: E402
from effort_server.training.tasks import digits as dg  # noqa: E402

BASE = dict(
    batch_size=32,
    lr=3e-3,
    curriculum_start=6,
    curriculum_until=0.4,
    hidden=128,
    layers=4,
    heads=4,
    kv_heads=2,
    max_digits=16,
    styles=None,
    warm=0.03,
    tok=1.0,
)
CONFIGS = {
    "A": {},
    "B": dict(batch_size=64, lr=2e-3, curriculum_start=16),
    "C": dict(batch_size=64, lr=2e-3),
    "D": dict(batch_size=64, lr=2e-3, kv_heads=4),
    "E": dict(lr=2e-3, kv_heads=4),
    "F": dict(batch_size=64, lr=1e-3, curriculum_start=4, curriculum_until=0.6),
    "G": dict(batch_size=64, lr=2e-3, layers=6),
    "H": dict(batch_size=64, lr=2e-3, max_digits=12, curriculum_until=0.3),
    "I": dict(batch_size=64, lr=2e-3, styles={"verbose": 0.7, "plain": 0.26, "none": 0.04}),
    "J": dict(batch_size=128, lr=3e-3),
    "K": dict(batch_size=64, lr=2e-3, hidden=192, heads=6, kv_heads=6),
    "L": dict(batch_size=64, lr=2e-3, warm=0.1, kv_heads=4, curriculum_start=4, curriculum_until=0.5),
    "M": dict(batch_size=64, lr=2e-3, warm=0.1, curriculum_start=4, curriculum_until=0.5),
    "N": dict(batch_size=64, lr=2e-3, warm=0.1, kv_heads=4, curriculum_start=4, curriculum_until=0.5, tok=0.75),
    "O": dict(batch_size=64, lr=1.5e-3, warm=0.1, kv_heads=4, curriculum_start=4, curriculum_until=0.6),
    "P": dict(batch_size=64, lr=1.5e-3, warm=0.1, kv_heads=4, curriculum_start=4, curriculum_until=0.6, tok=0.75),
    "C2": dict(batch_size=64, lr=2e-3, tok=2.0),
    "D2": dict(batch_size=64, lr=2e-3, kv_heads=4, tok=2.0),
}
# CPU cost per token relative to the 4-layer, hidden-128 model: bigger models get fewer tokens.
CONFIGS["G"]["tok"] = 0.67
CONFIGS["K"]["tok"] = 0.45


def run(name: str, tokens_budget: float, device: str, n_eval: int, threads: int, seed: int = 0) -> dict:
    import torch

    c = {**BASE, **CONFIGS[name]}
    tokens_budget *= c["tok"]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    task = dg.DigitsTask(max_digits=c["max_digits"], styles=c["styles"] or None)
    cfg = bm.BaseModelConfig(
        hidden=c["hidden"],
        layers=c["layers"],
        heads=c["heads"],
        kv_heads=c["kv_heads"],
        batch_size=c["batch_size"],
        lr=c["lr"],
        warmup=c["warm"],
        tokens=tokens_budget,
        curriculum_start=c["curriculum_start"],
        curriculum_until=c["curriculum_until"],
        max_steps=10**6,
    )
    tok, model, _ = bm._new_model(cfg, task)
    model.to(device)
    t0 = time.time()
    steps, seen = bm.fit(cfg, model, tok, task, random.Random(seed), budget_s=1e9, device=device, log=lambda *_: None)
    train_s = time.time() - t0
    acc = evaluate(model, tok, device, n_eval)
    return {
        "name": name,
        "seed": seed,
        "config": c,
        "steps": steps,
        "tokens": seen,
        "train_s": round(train_s, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": acc,
    }


def evaluate(model, tok, device: str, n: int) -> dict:
    import torch

    model.eval()
    probs = dg.DigitsTask().problems("test", n=n, seed=0)
    tok.padding_side = "left"
    hits: dict[str, list[int]] = {}
    lens: dict[str, list[int]] = {}
    end = tok.convert_tokens_to_ids(bm.THINK_END)
    for i in range(0, len(probs), 100):
        chunk = probs[i : i + 100]
        enc = tok(
            [bm.render_prompt(p.question) for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=260,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        for p, row in zip(chunk, out[:, enc["input_ids"].shape[1] :].tolist()):
            text = tok.decode(row, skip_special_tokens=False)
            b = dg.DigitsTask().bucket(p)
            hits.setdefault(b, []).append(int(dg.DigitsTask().grade(text, p)))
            lens.setdefault(b, []).append(row.index(end) if end in row else len(row))
    res = {b: round(sum(v) / len(v), 3) for b, v in sorted(hits.items())}
    res["all"] = round(sum(sum(v) for v in hits.values()) / len(probs), 3)
    res["mean_len"] = {b: round(sum(v) / len(v), 1) for b, v in sorted(lens.items())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+")
    ap.add_argument("--tokens", type=float, default=6e6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for name in a.names:
        r = run(name, a.tokens, a.device, a.n_eval, a.threads, a.seed)
        line = json.dumps(r)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
