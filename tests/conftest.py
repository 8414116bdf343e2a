"""Shared fixtures: one offline vLLM engine per test session, on the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("EFFORT_TEST_MODEL", REPO / "models" / "effort-tiny"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    assert (MODEL / "model.safetensors").is_file(), "the embedded model is missing: run `make model`"
    return MODEL


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    """The embedded model's tokenizer, loaded once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def evaluator(model_dir):
    """The evaluator's offline vLLM engine (same settings as serving), started once."""
    from effort_server.training.evaluate import Evaluator

    return Evaluator(str(model_dir))


@pytest.fixture(scope="session")
def task():
    from effort_server.training.tasks import DigitsTask

    return DigitsTask()


def make_noisy_adapter(model_dir: Path, folder: Path, name: str = "noisy", seed: int = 0) -> Path:
    """A real peft LoRA on the embedded model with random B (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from effort_server.contract.manifest import AdapterManifest

    pm = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    pm.save_pretrained(folder)
    AdapterManifest(name=name, kind="other", base_model=str(model_dir)).write(folder)
    return folder


@pytest.fixture(scope="session")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    """A folder of adapters: `noisy` (a real random LoRA) and `broken` (a corrupt manifest)."""
    folder = tmp_path_factory.mktemp("adapters")
    make_noisy_adapter(model_dir, folder / "noisy")
    (folder / "broken").mkdir()  # a corrupt folder: skipped with a log line, not fatal
    (folder / "broken" / "manifest.json").write_text("{not json")
    return folder


@pytest.fixture(scope="session")
def quick_adapters(model_dir, tmp_path_factory) -> Path:
    """`--quick` runs of every RL recipe (2 GRPO steps each), trained once per session."""
    from effort_server.training.recipes import RECIPES
    from effort_server.training.rl import RLConfig, train_recipe

    folder = tmp_path_factory.mktemp("trained")
    runs = tmp_path_factory.mktemp("runs")
    for kind, cls in RECIPES.items():
        train_recipe(
            cls,
            RLConfig(
                model=str(model_dir),
                quick=True,
                threads=1,
                name=f"q-{kind}",
                lr_schedule="linear" if kind == "dler-da" else "constant",
                out=str(folder / f"q-{kind}"),
                run_dir=str(runs / kind),
            ),
            log=lambda *_: None,
        )
    return folder


SERVER_PID: dict = {}


@pytest.fixture(scope="session")
def server_pid(server) -> int:
    """The process id of the session's `effort serve` (its engine core is a child)."""
    return SERVER_PID["pid"]


@pytest.fixture(scope="session")
def server(model_dir, adapter_dir, tmp_path_factory):
    """A real `effort serve` process on the embedded model (one per session): the shipped adapters
    and router (adapters/) and the test adapters — no training run before it starts."""
    import sys
    import time

    from procs import free_port, start, stop

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    proc = start(
        [
            sys.executable,
            "-m",
            "effort_server.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(model_dir),
            "--adapters",
            f"{REPO / 'adapters'},{adapter_dir}",
            "--log-level",
            "warning",
        ],
        tmp_path_factory.mktemp("logs") / "server.log",
        base,
        timeout=180,
    )
    print(f"\nserver ready in {time.time() - t0:.1f} s")
    SERVER_PID["pid"] = proc.pid
    yield base
    stop(proc)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
