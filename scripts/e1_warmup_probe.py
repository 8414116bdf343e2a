"""Experiment (not part of a recipe): can a LoRA warm-up make the model read e1's effort text?

The probe that led to `E1.prepare`'s warm-up (the recipe now does the same with `relabel` and
`decision_weights`); kept to explore the warm-up's settings on a base model folder without a
whole run. Three steps:
  1. `sample`: greedy + temperature-1 samples (vLLM) of train prompts -> samples.json;
  2. `warmup`: hindsight relabelling (each correct sample gets the effort text nearest its
     length ratio, effort bins balanced) and LoRA SFT with the loss weighted `--weight`× on the
     decision tokens (close, re-check, conclusion, and each token after an `` ok``);
  3. `measure`: greedy (HF) realised length ratio and accuracy at efforts 0.25 … 1.0 on test
     prompts, relative to the base's own greedy length.

    .venv/bin/python scripts/e1_warmup_probe.py sample --base DIR --out samples.json
    .venv/bin/python scripts/e1_warmup_probe.py warmup --base DIR --samples samples.json --out LORA --weight 5
    .venv/bin/python scripts/e1_warmup_probe.py measure --base DIR --adapter LORA
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effort_server.training.recipes.e1 import CONTROL, GRID, relabel  # noqa: E402
from effort_server.training.rl import LORA_TARGETS  # noqa: E402
from effort_server.training.tasks import DigitsTask  # noqa: E402

from effort_server.contract.prompt import render_chat  # noqa: E402


def sample(a):
    from effort_server.training.evaluate import Evaluator

    ev, task = Evaluator(a.base), DigitsTask()
    probs = task.problems("train", a.prompts, 0)
    greedy = ev.generate(probs, task, None, [None] * len(probs))
    full = {r["id"]: r["reasoning_tokens"] for r in greedy}
    rows = greedy + ev.generate(probs, task, None, [None] * len(probs), temperature=1.0, samples=a.samples, seed=11)
    Path(a.out).write_text(
        json.dumps(
            [
                dict(
                    q=r["question"],
                    t_ref=full[r["id"]],
                    reasoning=r["reasoning"],
                    answer=r["answer_text"],
                    rt=r["reasoning_tokens"],
                    correct=r["correct"],
                )
                for r in rows
            ]
        )
    )


def _render(tok, question, effort):
    return render_chat(tok, question, control=CONTROL, value=effort)


def warmup(a):
    import torch
    from effort_server.training.base_model import _pad
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(a.base),
        LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS.split(","), task_type="CAUSAL_LM"),
    )
    bins = collections.defaultdict(list)
    samples = json.loads(Path(a.samples).read_text())
    if a.per_prompt:  # each prompt, each effort: its correct sample nearest that ratio (the recipe's relabel)
        by_q = collections.defaultdict(list)
        for s in samples:
            if s["correct"]:
                by_q[s["q"]].append((s["rt"] / max(1, s["t_ref"]), s))
        for _, e, s in relabel(by_q, GRID, a.tol):
            bins[e].append(s)
    else:
        for s in samples:
            ratio = s["rt"] / max(1, s["t_ref"])
            e = min(GRID, key=lambda g: abs(g - ratio))
            if s["correct"] and abs(e - ratio) <= a.tol:
                bins[e].append(s)
    print("samples per effort bin:", {k: len(v) for k, v in sorted(bins.items())})
    decision = {tok.convert_tokens_to_ids(t) for t in ("</think>", "Ġcheck", "Ġanswer")}
    ok = tok.convert_tokens_to_ids("Ġok")
    rng, per, pairs = random.Random(0), max(len(v) for v in bins.values()), []
    for e, items in bins.items():
        for s in items + rng.choices(items, k=per - len(items)):
            p = tok(_render(tok, s["q"], e), add_special_tokens=False)["input_ids"]
            c = tok("<think>" + s["reasoning"] + "</think>" + s["answer"] + "<|im_end|>", add_special_tokens=False)[
                "input_ids"
            ]
            ids = p + c
            w = [0.0] * len(p) + [
                a.weight if (ids[i] in decision or ids[i - 1] == ok) else 1.0 for i in range(len(p), len(ids))
            ]
            pairs.append((ids, w))
    opt = torch.optim.AdamW([x for x in model.parameters() if x.requires_grad], lr=a.lr)
    model.train()
    for step in range(a.steps):
        batch = rng.sample(pairs, 32)
        x, _, mask = _pad([ids for ids, _ in batch], [ids for ids, _ in batch], tok.pad_token_id)
        wt = torch.zeros(x.shape)
        for i, (_, w) in enumerate(batch):
            wt[i, : len(w)] = torch.tensor(w)
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
        ).view(x.shape[0], -1)
        loss = (ce * wt[:, 1:]).sum() / wt[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: weighted loss {loss.item():.4f}", flush=True)
    model.save_pretrained(a.out)


def measure(a):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(a.base)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(a.base).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base), a.adapter).eval()
    task = DigitsTask()
    probs = task.problems("test", a.prompts, 0)
    close = tok.convert_tokens_to_ids("</think>")

    def run(model, contents):
        texts = [render_chat(tok, c) for c in contents]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=a.max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        out = []
        for row, p in zip(gen[:, enc["input_ids"].shape[1] :].tolist(), probs):
            n = row.index(close) - 1 if close in row else len(row)
            out.append((n, task.grade(tok.decode(row).split("</think>")[-1], p)))
        return out

    full = run(base, [p.question for p in probs])
    print(
        f"base: accuracy {sum(c for _, c in full) / len(full):.3f}, mean reasoning {sum(n for n, _ in full) / len(full):.1f}"
    )
    for e in a.efforts:
        r = run(tuned, [CONTROL.with_value(p.question, e) for p in probs])
        ratio = sum(n / max(1, f) for (n, _), (f, _) in zip(r, full)) / len(r)
        print(f"effort {e}: realised ratio {ratio:.3f}, accuracy {sum(c for _, c in r) / len(r):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--base", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--prompts", type=int, default=384)
    s.add_argument("--samples", type=int, default=8)
    w = sub.add_parser("warmup")
    w.add_argument("--base", required=True)
    w.add_argument("--samples", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--weight", type=float, default=5.0)
    w.add_argument("--steps", type=int, default=400)
    w.add_argument("--lr", type=float, default=1e-3)
    w.add_argument("--per-prompt", action="store_true", help="per prompt and effort, the nearest correct sample")
    w.add_argument("--tol", type=float, default=0.05, help="largest |length ratio - effort| kept")
    m = sub.add_parser("measure")
    m.add_argument("--base", required=True)
    m.add_argument("--adapter", required=True)
    m.add_argument("--prompts", type=int, default=64)
    m.add_argument("--max-tokens", type=int, default=270)
    m.add_argument("--efforts", type=lambda v: [float(x) for x in v.split(",")], default=[0.25, 0.5, 0.75, 1.0])
    a = ap.parse_args()
    {"sample": sample, "warmup": warmup, "measure": measure}[a.cmd](a)


if __name__ == "__main__":
    main()
