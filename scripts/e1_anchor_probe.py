"""Experiment: the e1 anchor applied to an existing e1 adapter folder (--src), then e1's calibration
and evaluation (500 test prompts). .venv/bin/python scripts/e1_anchor_probe.py --src adapters/e1 --replay 1.0
"""
import json, shutil, sys, time, argparse
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=40)
ap.add_argument("--lr", type=float, default=2e-4)
ap.add_argument("--controls", default="0.95,1.0")
ap.add_argument("--n", type=int, default=512)
ap.add_argument("--out", default="runs/e1-anchored")
ap.add_argument("--src", default="adapters/e1")
ap.add_argument("--replay", type=float, default=0.0, help="replay pairs per anchor pair")
ap.add_argument("--replay-max", type=float, default=0.85)
a = ap.parse_args()
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from server.engine import default_model
from server.manifest import ModelManifest
from server.reasoning import Markers
from training.evaluate import Evaluator
from training.recipes.e1 import CONTROL, E1
from training.rl import Context, RLConfig, load_problems
from training.tasks import load_task
t0 = time.time()
base = default_model()
ev = Evaluator(base)
tok = AutoTokenizer.from_pretrained(base)
eos = tok.eos_token_id
torch.set_num_threads(2)
task = load_task("digits")
probs = load_problems(task, 1024, 0)[: a.n]
rows = ev.generate(probs, task, None, [None] * len(probs), keep_ids=True)
from server.manifest import AdapterManifest
from server.registry import Adapter
from training.recipes.e1 import GRID
import random
srcm = AdapterManifest.read(a.src)
srcm.control.calibration = []
stage = Path(a.out + "-src"); shutil.rmtree(stage, ignore_errors=True); shutil.copytree(a.src, stage); srcm.write(stage)
replay = []
if a.replay > 0:
    low = [g for g in GRID if g <= a.replay_max]
    rng = random.Random(5)
    k = int(a.replay * len(probs))
    rp = [rng.choice(probs) for _ in range(k)]
    effs = [rng.choice(low) for _ in rp]
    rr = ev.generate(rp, task, Adapter("src", stage.resolve(), srcm, lora_id=21), [None] * len(rp), keep_ids=True, effort=effs)
    for r, e in zip(rr, effs):
        if r["correct"] and r["finish_reason"] == "stop":
            ids = r["token_ids"] if r["token_ids"][-1:] == [tok.eos_token_id] else r["token_ids"] + [tok.eos_token_id]
            replay.append((r["question"], e, ids))
    print(f"replay: {len(replay)}/{len(rp)} kept", flush=True)
good = {r["id"]: (r["token_ids"] if r["token_ids"][-1:] == [eos] else r["token_ids"] + [eos]) for r in rows
        if r["correct"] and r["finish_reason"] == "stop"}
print(f"greedy: {len(good)}/{len(rows)} correct ({time.time()-t0:.0f}s)", flush=True)
mm = ModelManifest.read(base)
markers = Markers.from_tokenizer(tok, mm.think_start, mm.think_end)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), a.src, is_trainable=True)
ctx = Context(task=task, problems={p.id: p for p in probs}, tokenizer=tok, markers=markers, max_completion=2 * mm.default_full_effort_tokens + 16, model=model)
cs = [float(c) for c in a.controls.split(",")]
rng2 = random.Random(9)
pairs = [(ctx.render(CONTROL.render(ctx.problems[pid].question, rng2.choice(cs))), ids) for pid, ids in good.items()]
pairs += [(ctx.render(CONTROL.render(q, e)), ids) for q, e, ids in replay]
print(f"pairs: {len(pairs)}", flush=True)
if a.steps:
    loss = ctx.sft(pairs, steps=a.steps, lr=a.lr, seed=3)
    print(f"sft {a.steps} steps lr {a.lr}: loss {loss:.4f} ({time.time()-t0:.0f}s)", flush=True)
out = Path(a.out)
shutil.rmtree(out, ignore_errors=True)
model.save_pretrained(str(out))
srcm.write(out)
rec = E1(RLConfig(), ctx)
res = rec.finish(out, ev)
print(json.dumps(res["calibration_realised"]))
for e, v in res["efforts"].items():
    print(f"effort {e}: acc {100*v['accuracy']:.1f}%  ratio {v['realised_ratio']:.3f}  mean {v['mean_reasoning']:.1f}")
print(json.dumps(json.load(open(out / "manifest.json"))["control"]["calibration"]))
print(f"total {time.time()-t0:.0f}s")
