"""Engine construction on CPU: the KV-cache size we give vLLM, and the forked engine core that
must not outlive a server killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from effort_server.server.engine import EngineSettings, default_model, kv_cache_bytes

MiB = 2**20
REPO = Path(__file__).resolve().parent.parent


def _model(tmp_path: Path, **cfg) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize(
    "case, cfg, settings, want",
    [
        # embedded model: 2 (K, V) x 4 layers x 4 kv heads x 32 head dim x 4 bytes x 64 seqs x 1024 tokens
        ("embedded", None, {}, 256 * MiB),
        ("fewer seqs", None, {"max_num_seqs": 16}, 64 * MiB),
        ("floor", {"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 8}, {}, 64 * MiB),
        (
            "cap",
            {"num_hidden_layers": 64, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192},
            {},
            1024 * MiB,
        ),
        (
            "head_dim and text_config",
            {
                "text_config": {
                    "num_hidden_layers": 2,
                    "num_attention_heads": 8,
                    "num_key_value_heads": 2,
                    "head_dim": 64,
                    "hidden_size": 256,
                }
            },
            {"max_num_seqs": 64, "max_model_len": 2048},
            2 * 2 * 2 * 64 * 4 * 64 * 2048,
        ),
        ("not sizeable", {"architectures": ["Something"]}, {}, 1024 * MiB),
        ("user engine_args", None, {"engine_args": '{"kv_cache_memory_bytes": 123}'}, None),
    ],
)
def test_kv_cache_bytes(tmp_path, monkeypatch, case, cfg, settings, want):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model = default_model() if cfg is None else _model(tmp_path / "m", **cfg)
    assert kv_cache_bytes(EngineSettings(model=model, **settings)) == want, case


def test_kv_cache_bytes_user_env_wins(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert kv_cache_bytes(EngineSettings()) is None


CHILD = """
import multiprocessing, sys, time
from effort_server.server.engine import fork_engine_core
guard = sys.argv[1] == "guarded"
ctx = multiprocessing.get_context("fork")
p = ctx.Process(target=time.sleep, args=(120,))
if guard:
    with fork_engine_core():
        p.start()
else:
    p.start()
print(p.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waiting for its new parent to reap it is dead


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("mode", ["guarded", "plain"])
def test_engine_core_dies_with_a_killed_server(mode):
    """SIGKILL the parent: a child forked under `fork_engine_core` is gone within seconds; a
    plain fork (the control) is orphaned and lives on."""
    # a user's VLLM_WORKER_MULTIPROC_METHOD turns fork_engine_core off; vLLM's CPU platform sets it to
    # `spawn` in the environment of any process that built an engine (this test session, before us)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_WORKER_MULTIPROC_METHOD"}
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(child) == (mode == "plain")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
