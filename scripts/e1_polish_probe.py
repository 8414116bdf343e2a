"""Experiment: e1's anchor phase (`E1.anchor`, as the recipe runs it) on a GRPO checkpoint (--src, an
adapter folder such as runs/e1/checkpoint-N), then e1's calibration and the evaluation on 500 test
prompts. Lets the anchor be changed and measured without re-running the warm-up and GRPO.
  .venv/bin/python scripts/e1_polish_probe.py --src runs/e1/checkpoint-19 --out runs/e1-polished
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ap = argparse.ArgumentParser()
ap.add_argument(
    "--src",
    required=True,
    help="adapter folder: a GRPO checkpoint (runs/e1/checkpoint-N) or, with --finish-only, a polished adapter",
)
ap.add_argument(
    "--out", default="runs/e1-polished", help="where the polished, calibrated adapter is written (replaced)"
)
ap.add_argument("--finish-only", action="store_true", help="--src is already polished: calibrate and evaluate it")
a = ap.parse_args()

import torch
from effort_server.server.engine import default_model
from effort_server.training.context import Context
from effort_server.training.recipes.e1 import CONTROL, E1
from effort_server.training.rl import RLConfig, load_problems
from effort_server.training.tasks import load_task
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from effort_server.contract.manifest import AdapterManifest, ModelManifest
from effort_server.contract.markers import Markers

t0 = time.time()
cfg = RLConfig()
base = default_model()
tok = AutoTokenizer.from_pretrained(base)
mm = ModelManifest.read(base)
task = load_task(cfg.task)
problems = load_problems(task, cfg.n_prompts, cfg.seed)
model = PeftModel.from_pretrained(
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), a.src, is_trainable=True
)
ctx = Context(
    task=task,
    problems={p.id: p for p in problems},
    tokenizer=tok,
    markers=Markers.from_tokenizer(tok, mm.think_start, mm.think_end),
    max_completion=E1.default_cap(mm.default_full_effort_tokens),
    model=model,
)
rec = E1(cfg, ctx)
out = Path(a.out)
if a.finish_only:
    if out.resolve() != Path(a.src).resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(a.src, out)
    from effort_server.training.evaluate import Evaluator

    rec.evaluator = Evaluator(base)
else:
    rec.t_ref = {pid: float(max(1, n)) for pid, n, _, _ in rec._complete(problems, 0.0, 1)}  # as prepare() measures it
    torch.set_num_threads(cfg.threads)
    print(f"T(x) of {len(rec.t_ref)} prompts ({time.time() - t0:.0f}s)", flush=True)
    rec.anchor(problems, lambda m: print(m, flush=True))
    print(f"anchor {json.dumps(rec.anchor)} ({time.time() - t0:.0f}s)", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out))
man = AdapterManifest.read(a.src if a.finish_only and (Path(a.src) / "manifest.json").is_file() else "adapters/e1")
man.control = CONTROL.model_copy(deep=True)
man.write(out)
res = rec.finish(out, rec.evaluator)
if a.finish_only:  # the recipe's evaluation record, with the new calibration's measures
    man = AdapterManifest.read(out)
    man.evaluation = {**man.evaluation, **res}
    man.write(out)
print("calibration realised " + json.dumps(res["calibration_realised"]))
for e, v in res["efforts"].items():
    print(
        f"effort {e}: acc {100 * v['accuracy']:.1f}%  ratio {v['realised_ratio']:.3f}  mean {v['mean_reasoning']:.1f}"
    )
print("calibration " + json.dumps(AdapterManifest.read(out).control.calibration))
print(f"total {time.time() - t0:.0f}s")
