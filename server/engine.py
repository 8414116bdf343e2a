"""Engine settings and construction: one place that turns settings into vLLM engine arguments.

The server (`AsyncLLM`, in-process) and the evaluator (offline `LLM`) both build their engine
here, so an evaluation measures exactly what serving runs. The think markers come from the
model's manifest and go to vLLM's `ReasoningConfig` as strings, so vLLM enforces
`SamplingParams.thinking_token_budget` inside the engine (forcing the end marker at exactly the
budget).

On a machine without a GPU the CPU defaults below apply (no CPU binding, a KV cache sized to
the model by `kv_cache_bytes`, eager mode, the engine core forked): measured 1.5–2.4 s engine
start for the embedded model.
"""

from __future__ import annotations

import gc
import json
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
}


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


SMALL_MODEL_BYTES = 64 * 2**20
_USER_THREADS = os.environ.get("OMP_NUM_THREADS")


def weights_bytes(model: str) -> int:
    """Bytes of weight files in a model folder (0 for a hub name or a folder without weights)."""
    p = Path(model)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))


def kv_cache_bytes(settings: "EngineSettings") -> int | None:
    """CPU KV-cache size for `settings`: what `max_num_seqs` full-length sequences need, at 4 bytes
    an element (room for float32), between 64 MiB and 1 GiB; None on a GPU (vLLM sizes it from
    `gpu_memory_utilization`) or where the user chose (VLLM_CPU_KVCACHE_SPACE or engine_args).

    vLLM's CPU backend otherwise takes a fixed 1 GiB here, and zeroing it is ≈ 0.9 s of a start:
    the embedded model needs 4 KiB a token, 256 MiB for 64 × 1024 tokens. A config without the
    usual fields (not a decoder we can size) gets the 1 GiB."""
    user_args = json.loads(settings.engine_args) if settings.engine_args else {}
    if has_gpu() or os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "kv_cache_memory_bytes" in user_args:
        return None
    lo, hi = 64 * 2**20, 2**30
    try:
        cfg = json.loads((Path(settings.model or default_model()) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        per_token = (
            2
            * cfg["num_hidden_layers"]
            * cfg.get("num_key_value_heads", heads)
            * cfg.get("head_dim", cfg["hidden_size"] // heads)
            * 4
        )
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return hi
    return min(hi, max(lo, per_token * settings.max_num_seqs * model_len(settings)))  # on a CPU: never None


CPU_MAX_MODEL_LEN = 4096


def model_len(settings: "EngineSettings") -> int | None:
    """The context length to serve: the setting, else the model config's `max_position_embeddings`
    (on a CPU at most CPU_MAX_MODEL_LEN; with no readable config there, that cap). None on a GPU
    when the config cannot be read: vLLM's own choice."""
    if settings.max_model_len:
        return settings.max_model_len
    try:
        cfg = json.loads((Path(settings.model or default_model()) / "config.json").read_text())
        n = int(cfg.get("text_config", cfg)["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        n = None
    if has_gpu():
        return n
    return min(n or CPU_MAX_MODEL_LEN, CPU_MAX_MODEL_LEN)


def prepare_env(model: str = "") -> None:
    """Set CPU-friendly vLLM defaults (never overriding the user's environment).

    With `model` (serving and the serve bench): a model whose weights fit in `SMALL_MODEL_BYTES`
    (the embedded one is 4 MB) runs its forward passes on one CPU thread. Its matrices are too
    small to gain from a second thread, and the spin-waiting OpenMP threads would take the core
    the HTTP layer, the tokenizer and the clients need (measured: vLLM's own server answers
    faster with one thread on this model at concurrency 1 and 16). The user's OMP_NUM_THREADS wins.
    """
    if has_gpu():
        return
    for k, v in CPU_ENV.items():
        os.environ.setdefault(k, v)
    if model and _USER_THREADS is None and 0 < weights_bytes(model) <= SMALL_MODEL_BYTES:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # for child processes (vLLM's server in the bench)
        torch.set_num_threads(1)  # this process: torch is already imported


@contextmanager
def fork_engine_core():
    """Start vLLM's engine-core process by `fork` instead of `spawn` on CPU machines.

    vLLM's CPU platform forces `spawn`, so the engine core re-imports vLLM and torch from scratch
    (≈ 17 s of a 37 s start on this 2-core machine). Nothing CUDA is initialised on a CPU
    machine and the engine core is forked before any generation runs, so a fork inherits the
    imports safely. A user's own VLLM_WORKER_MULTIPROC_METHOD always wins; GPUs keep vLLM's choice.

    The heap is frozen right before the fork (the recipe of Python's `gc.freeze` docs for a fork
    without exec): the engine core's own full collections — two while loading weights, one
    before it serves — then skip the ≈ 570,000 objects the imports left (≈ 1.5 s of its start on
    this machine) and leave their pages shared with the parent.

    The forked engine core asks the kernel for SIGTERM when the server dies (`PR_SET_PDEATHSIG`,
    Linux): a server killed outright (SIGKILL, the OOM killer) does not leave an orphaned engine
    core holding its memory and KV cache. vLLM's engine core shuts down cleanly on SIGTERM.
    """
    key = "VLLM_WORKER_MULTIPROC_METHOD"
    if has_gpu() or _USER_MP_METHOD is not None:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = "fork"
    gc.freeze()
    _ORPHAN_GUARD["parent"] = os.getpid()
    try:
        yield
    finally:
        _ORPHAN_GUARD["parent"] = None
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


_USER_MP_METHOD = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")
_ORPHAN_GUARD: dict[str, int | None] = {"parent": None}


def _die_with_parent() -> None:
    """After a fork inside `fork_engine_core`, in the child: SIGTERM when the parent dies."""
    parent, _ORPHAN_GUARD["parent"] = _ORPHAN_GUARD["parent"], None  # not for the child's own forks
    if parent is None:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_die_with_parent)


@dataclass
class EngineSettings:
    # the flags `effort ... --help` lists (all of them with --help-all)
    HELP_MAIN = ("model", "max_model_len", "dtype", "gpu_memory_utilization", "tensor_parallel_size")

    model: str = field(default="", metadata={"help": "model folder or id (default: the embedded model)"})
    max_model_len: int = field(
        default=0, metadata={"help": "max tokens of prompt + completion (0: the model's own; at most 4096 on a CPU)"}
    )
    dtype: str = field(
        default="auto", metadata={"help": "weights/activations dtype (auto, float32, bfloat16, float16)"}
    )
    max_num_seqs: int = field(default=64, metadata={"help": "max requests the engine runs at once"})
    max_loras: int = field(default=4, metadata={"help": "adapters resident in one batch"})
    max_lora_rank: int = field(default=16, metadata={"help": "largest LoRA rank served"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per model replica (tensor parallel)"})
    pipeline_parallel_size: int = field(default=1, metadata={"help": "pipeline stages (multi-node on Ray)"})
    distributed_executor_backend: str = field(
        default="", metadata={"help": "vLLM executor: uni, mp or ray (default: uni on CPU, vLLM's choice on GPU)"}
    )
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "GPU memory fraction for the engine"})
    enforce_eager: bool = field(default=False, metadata={"help": "disable CUDA graphs (always on for CPU)"})
    seed: int = field(default=0, metadata={"help": "engine seed"})
    engine_args: str = field(
        default="", metadata={"help": 'extra vLLM engine args as JSON, e.g. \'{"quantization": "fp8"}\''}
    )

    def __post_init__(self):
        if self.max_model_len and self.max_model_len < 16:
            raise ValueError("max_model_len must be 0 (the model's) or >= 16")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError("tensor/pipeline parallel sizes must be >= 1")
        if self.engine_args:
            try:
                extra = json.loads(self.engine_args)
            except json.JSONDecodeError as e:
                raise ValueError(f"engine_args is not valid JSON: {e.msg}") from None
            if not isinstance(extra, dict):
                raise ValueError("engine_args must be a JSON object")


REPO = Path(__file__).resolve().parent.parent


def default_model() -> str:
    return str(REPO / "models" / "effort-tiny")


def portable_path(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it (so manifests survive a clone
    elsewhere), else as given."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(path)


def resolve_path(path: str | Path) -> str:
    """Inverse of `portable_path`: a relative path that does not exist here is taken from the
    repository root."""
    p = Path(path)
    return str(REPO / p) if not p.is_absolute() and not p.exists() and (REPO / p).exists() else str(p)


def default_adapter_dir() -> str:
    return str(REPO / "adapters")


def engine_kwargs(settings: EngineSettings, think_start: str, think_end: str) -> dict:
    """Keyword arguments for `AsyncEngineArgs` / `vllm.LLM` (same for serving and evaluation)."""
    from vllm.config import ReasoningConfig, StructuredOutputsConfig

    gpu = has_gpu()
    kw = dict(
        model=settings.model or default_model(),
        dtype=settings.dtype,
        max_num_seqs=settings.max_num_seqs,
        enable_lora=True,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        seed=settings.seed,
        enforce_eager=settings.enforce_eager or not gpu,
        reasoning_config=ReasoningConfig(reasoning_start_str=think_start, reasoning_end_str=think_end),
        # structured answers: vLLM applies the grammar after the end marker, found by our parser plugin
        structured_outputs_config=StructuredOutputsConfig(
            reasoning_parser="effort-markers", reasoning_parser_plugin="effort_server.server.think_parser"
        ),
    )
    os.environ["EFFORT_THINK_MARKERS"] = json.dumps([think_start, think_end])  # read by the plugin, in vLLM's process
    # loaded here, so the engine process forked from this heap finds it loaded (A/B against the
    # code before structured answers: 0.98-1.00 x the latency; loaded by file path there: 1.02-1.03)
    import effort_server.server.think_parser  # noqa: F401

    n = model_len(settings)
    if n:
        kw["max_model_len"] = n
    kv = kv_cache_bytes(settings)
    if kv:
        kw["kv_cache_memory_bytes"] = kv
    backend = settings.distributed_executor_backend or ("uni" if not gpu else None)
    if backend:
        kw["distributed_executor_backend"] = backend
    if gpu:
        kw["gpu_memory_utilization"] = settings.gpu_memory_utilization
    if settings.engine_args:
        kw.update(json.loads(settings.engine_args))
    return kw
