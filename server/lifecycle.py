"""Engine lifecycle: open the in-process vLLM engine or the gateway's upstream, load the router.

`open_engine` builds vLLM's `AsyncLLM` from `EngineSettings` (the LoRA rank raised to the largest
served adapter's, the think markers given to vLLM's budget); `open_gateway` connects to an
OpenAI-compatible vLLM server (or fleet) and checks which adapters it serves. Both return an
object with vLLM's `generate` / `abort` interface; `close` shuts either down. `model_manifest`
reads a base model's manifest, or builds one from the model itself (think markers from its
tokenizer); `matching_adapters` keeps the adapters trained on the served base.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..contract.manifest import ModelManifest, model_hash
from ..contract.markers import detect_markers
from ..contract.scoring import Router, RouterError
from .config import ServerSettings
from .engine import EngineSettings, default_model, engine_kwargs, fork_engine_core, prepare_env, weights_bytes
from .metrics import Metrics, stat_logger_factory
from .registry import Adapter

log = logging.getLogger("effort.service")


def model_manifest(
    model_path: str, think_start: str = "", think_end: str = "", reasoning_parser: str = ""
) -> tuple[ModelManifest, bool]:
    """The model's manifest and whether it was measured (ours, or written by `effort profile`).
    Markers given (`--think-start/--think-end`, `--reasoning-parser`) override the manifest's.
    Without one: the think markers from those, else from the tokenizer (`MarkersNotFound`, a
    one-line ValueError, when none), and the default full-effort length."""
    try:
        m = ModelManifest.read(model_path)
    except Exception:
        m = None
    given = think_start or think_end or reasoning_parser
    if m is not None and not given:
        return m, True
    tok = None  # loaded only when the markers must be found in it
    if not given:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_path)
        except Exception as e:
            raise ValueError(f"cannot load the tokenizer of {model_path}: {str(e).splitlines()[0]}") from None
    start, end = detect_markers(tok, think_start, think_end, reasoning_parser)
    if m is not None:
        return m.model_copy(update={"think_start": start, "think_end": end}), True
    return ModelManifest(name=Path(model_path).name, think_start=start, think_end=end), False


HASH_LIMIT_BYTES = 2 * 2**30  # weights larger than this are matched by name (hashing them is slow)


def matching_adapters(adapters: dict[str, Adapter], model_path: str, base_name: str) -> dict[str, Adapter]:
    """The adapters trained on this base: by weights hash when both sides have one (weights up to
    HASH_LIMIT_BYTES), else by the base's folder name or id; the others skipped with a log line."""
    if not adapters:
        return adapters
    here = model_hash(model_path) if 0 < weights_bytes(model_path) <= HASH_LIMIT_BYTES else None
    names = {Path(model_path).name, base_name, model_path}
    kept = {}
    for name, a in adapters.items():
        theirs = a.manifest.base_model_hash
        if here and theirs and theirs != "unknown":
            ok = theirs == here
        else:
            ok = a.manifest.base_model in names or Path(a.manifest.base_model).name in names
        if ok:
            kept[name] = a
        else:
            log.warning(
                "adapter %s skipped: trained on %s, not on the served %s", name, a.manifest.base_model, model_path
            )
    return kept


def load_router(spec: str, adapter_paths: list[str]) -> Router | None:
    """The router named by `spec`; by default the `router` folder of the first adapters path when
    present (a broken default router is skipped with a log line; a named one must load)."""
    if spec == "none" or (not spec and not adapter_paths):
        return None
    if spec:
        router = Router.load(spec)  # RouterError: the server does not start with a broken named router
    else:
        folder = Path(adapter_paths[0]) / "router"
        if not folder.is_dir():
            return None
        try:
            router = Router.load(folder)
        except RouterError as e:
            log.warning("router skipped: %s", e)
            return None
    labels = ", ".join(r.label for r in router.routes)
    log.info("router: %d routes (%s), margin %g", len(router.routes), labels, router.margin)
    return router


def has_thinking_switch(tokenizer) -> bool:
    """The chat template reads `enable_thinking` (Qwen3 and others: false renders a closed,
    empty thinking block, the model's own no-think mode)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default", "")
    return "enable_thinking" in (template or "")


def adapter_rank(a: Adapter) -> int:
    try:
        return int(json.loads((a.path / "adapter_config.json").read_text()).get("r", 8))
    except Exception:
        return 8


def open_engine(settings: EngineSettings, manifest: ModelManifest, adapters: dict[str, Adapter], metrics: Metrics):
    """vLLM's in-process `AsyncLLM` (its engine core in a forked process)."""
    t0 = time.perf_counter()
    prepare_env(settings.model or default_model())
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    t1 = time.perf_counter()
    kw = engine_kwargs(settings, manifest.think_start, manifest.think_end)
    kw["max_lora_rank"] = max([kw["max_lora_rank"], *(adapter_rank(a) for a in adapters.values())])
    vllm_config = AsyncEngineArgs(**kw).create_engine_config(UsageContext.OPENAI_API_SERVER)
    t2 = time.perf_counter()
    with fork_engine_core():
        llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[stat_logger_factory(metrics)])
    log.info(
        "engine up in %.1f s: vLLM import %.1f s, config %.1f s, engine core %.1f s",
        time.perf_counter() - t0,
        t1 - t0,
        t2 - t1,
        time.perf_counter() - t2,
    )
    return llm


async def open_gateway(s: ServerSettings, base_name: str, adapters: dict[str, Adapter], metrics: Metrics):
    """The upstream vLLM server(s) of gateway mode; an unreachable one is a warning (502s until it answers)."""
    from vllm import SamplingParams  # noqa: F401 - requests build vLLM's SamplingParams; import it before ready

    from .upstream import UpstreamEngine, UpstreamError

    llm = UpstreamEngine(s.upstream, s.upstream_model, s.upstream_names(), s.upstream_timeout)
    try:
        served = await llm.check()
        if not s.upstream_model:
            llm.model = served[0] if served else base_name
        missing = [llm.names.get(a, a) for a in adapters if llm.names.get(a, a) not in served]
        if missing:
            log.warning("upstream %s does not serve adapter(s) %s", s.upstream, ", ".join(missing))
    except UpstreamError as e:
        llm.model = s.upstream_model or base_name
        log.warning("%s; starting anyway (requests get 502 until it answers)", e.message)
    llm.start_gauges(metrics)
    return llm


async def close(llm) -> None:
    if hasattr(llm, "aclose"):  # gateway
        await llm.aclose()
    else:
        llm.shutdown()
