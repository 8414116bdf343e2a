"""`effort bench serve`: our server vs vLLM's own OpenAI server, same model, same engine settings.

Both servers run at once (separate processes and ports). For each scenario (the concurrency
levels, streaming and not) the same requests go to vLLM, then to ours, `--repeats` times
alternating; the table shows medians of output tokens/s, p50 / p99 end-to-end latency and p50
time to first token, and the ratio ours / vLLM as the median of the per-repeat ratios (a slow
spell of a shared machine hits both sides of a ratio). At concurrency 1 a note adds the
request-by-request ratio. Prompts: `--prompts` JSONL, default the embedded model's prompts.jsonl.
Method and tables: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .engine import CPU_MAX_MODEL_LEN, EngineSettings, default_model, has_gpu, kv_cache_bytes, model_len


@dataclass
class BenchConfig:
    model: str = field(default="", metadata={"help": "model folder (default: the embedded model)"})
    requests: int = field(default=32, metadata={"help": "requests per scenario (at least --waves x the concurrency)"})
    waves: int = field(
        default=8, metadata={"help": "each scenario sends at least this many rounds of `concurrency` requests"}
    )
    repeats: int = field(
        default=6, metadata={"help": "alternating repeats per scenario (medians; ratios: median of the pairs)"}
    )
    max_tokens: int = field(default=256, metadata={"help": "max tokens per request"})
    concurrency: str = field(default="1,16", metadata={"help": "comma list of concurrency levels"})
    port: int = field(default=8301, metadata={"help": "first of the two ports used"})
    out: str = field(default="", metadata={"help": "also write the table as Markdown to this file"})
    prompts: str = field(
        default="", metadata={"help": 'JSONL of {"question": ...} (default: the embedded model\'s prompts.jsonl)'}
    )
    upstream: bool = field(
        default=False, metadata={"help": "measure gateway mode: ours in front of vLLM's server vs vLLM directly"}
    )

    def __post_init__(self):
        if self.requests < 1 or self.repeats < 1 or self.max_tokens < 1 or self.waves < 1:
            raise ValueError("--requests, --repeats, --waves and --max-tokens must be >= 1")
        try:
            self.levels = [int(c) for c in self.concurrency.split(",") if c.strip()]
        except ValueError:
            raise ValueError("--concurrency must be a comma list of integers") from None
        if not self.levels or min(self.levels) < 1:
            raise ValueError("--concurrency needs integers >= 1")


def load_prompts(path: str, n: int) -> list[str]:
    """`n` questions from a JSONL file (a "question" per line), repeated in order when it has fewer."""
    path = path or str(Path(default_model()) / "prompts.jsonl")
    with open(path) as f:
        qs = [json.loads(line)["question"] for line in f if line.strip()]
    if not qs:
        raise ValueError(f"{path}: no questions")
    return [qs[i % len(qs)] for i in range(n)]


def scenario_requests(requests: int, waves: int, concurrency: int) -> int:
    """Requests in one scenario run: `requests`, but at least `waves` rounds of `concurrency`.
    32 requests at concurrency 16 are two rounds (≈ 1.5 s on 2 cores): their p50 is set by two
    batches and their throughput is mostly a ramp-up and a tail; 8 rounds (128 requests) a run
    measure the steady state."""
    return max(requests, waves * concurrency)


def full_effort_budget(max_tokens: int) -> int:
    """The thinking budget our server enforces on a full-effort request with `max_tokens` (the
    answer reserve and the two think markers kept out of reasoning). The bench sends it to both
    servers, so both engines do the same work: a vLLM user who wants reasoning never to eat the
    whole output limit sets `thinking_token_budget` the same way."""
    from .config import ServerSettings
    from .policy import reasoning_cap

    return reasoning_cap(max_tokens, ServerSettings().answer_reserve)


def vllm_cmd(
    model: str,
    port: int,
    s: EngineSettings,
    think: tuple[str, str],
    served: str = "bench",
    loras: dict[str, str] | None = None,
) -> list[str]:
    """vLLM's own OpenAI server on `model` with our engine settings, the think markers as its
    reasoning config and `loras` (name → folder) as LoRA modules."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--max-model-len",
        str(model_len(s) or CPU_MAX_MODEL_LEN),
        "--max-num-seqs",
        str(s.max_num_seqs),
        "--enable-lora",
        "--max-loras",
        str(s.max_loras),
        "--max-lora-rank",
        str(s.max_lora_rank),
        "--seed",
        str(s.seed),
        "--served-model-name",
        served,
        "--reasoning-config",
        json.dumps({"reasoning_start_str": think[0], "reasoning_end_str": think[1]}),
        "--reasoning-parser",
        "deepseek_r1",
        "--disable-uvicorn-access-log",
    ]
    if loras:
        cmd += ["--lora-modules", *(f"{n}={p}" for n, p in loras.items())]
    if not has_gpu():
        cmd += ["--enforce-eager", "--distributed-executor-backend", "uni"]
    kv = kv_cache_bytes(dataclasses.replace(s, model=model))
    if kv:
        cmd += ["--kv-cache-memory-bytes", str(kv)]
    return cmd


def _ours_cmd(model: str, port: int, upstream: str = "") -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "effort_server.cli",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--log-level",
        "warning",
        "--adapters",
        "/nonexistent-adapters",
    ]
    return cmd + (["--upstream", upstream] if upstream else [])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300, path: str = "/health") -> float:
    """Seconds until GET url+path answers 200 (RuntimeError if the process exits or time runs out)."""
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server {url} not ready after {timeout} s")


async def _one(client, url: str, question: str, stream: bool, max_tokens: int, budget: int | None = None) -> dict:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if budget is not None:
        body["thinking_token_budget"] = budget
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    if not stream:
        r = await client.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        tokens = r.json()["usage"]["completion_tokens"]
    else:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    d = c.get("delta", {})
                    if ttft is None and (d.get("content") or d.get("reasoning") or d.get("reasoning_content")):
                        ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    return {"e2e": e2e, "ttft": ttft if ttft is not None else e2e, "tokens": tokens}


async def _scenario(
    url: str, questions: list[str], concurrency: int, stream: bool, max_tokens: int, budget: int | None = None
) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def run(q):
            async with sem:
                return await _one(client, url, q, stream, max_tokens, budget)

        t0 = time.perf_counter()
        rows = await asyncio.gather(*(run(q) for q in questions))
        wall = time.perf_counter() - t0
    lat = sorted(r["e2e"] for r in rows)
    return {
        "throughput": sum(r["tokens"] for r in rows) / wall,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "ttft50": statistics.median(r["ttft"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
    }


def _order(i: int) -> tuple[str, str]:
    """Which server goes first in the i-th pair: alternating, so neither always follows the other."""
    return ("vllm", "ours") if i % 2 == 0 else ("ours", "vllm")


async def _paired(
    urls: dict[str, str], questions: list[str], stream: bool, max_tokens: int, budget: int | None = None
) -> list[float]:
    """Concurrency 1, request by request: each question goes to both servers back to back (which
    one first alternates); the per-request end-to-end ratios ours / vLLM. A pair sees the same
    spell of the machine, which a block of 32 requests to one server and then the other does not."""
    import httpx

    ratios = []
    async with httpx.AsyncClient(timeout=600) as client:
        for i, q in enumerate(questions):
            e2e = {}
            for name in _order(i):
                e2e[name] = (await _one(client, urls[name], q, stream, max_tokens, budget))["e2e"]
            ratios.append(e2e["ours"] / e2e["vllm"])
    return ratios


def paired_line(ratios: dict[bool, list[float]]) -> str:
    """The table's note on the request-by-request ratios (median and interquartile range)."""
    parts = []
    for stream, rs in ratios.items():
        q = statistics.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
        parts.append(
            f"{'streamed' if stream else 'not streamed'} {q[1]:.3f} (IQR {q[0]:.3f}-{q[2]:.3f}, {len(rs)} requests)"
        )
    return (
        "Request by request at concurrency 1 (each question to both servers back to back, order "
        "alternating), median of the per-request e2e ratios ours / vLLM: " + "; ".join(parts) + "."
    )


def run_bench(cfg: BenchConfig) -> str:
    from ..contract.manifest import ModelManifest
    from .engine import prepare_env

    model = cfg.model or default_model()
    prepare_env(model)
    try:
        m = ModelManifest.read(model)
        think = (m.think_start, m.think_end)
    except Exception:
        think = ("<think>", "</think>")
    sizes = {c: scenario_requests(cfg.requests, cfg.waves, c) for c in cfg.levels}
    questions = load_prompts(cfg.prompts, max(sizes.values()))
    budget = full_effort_budget(cfg.max_tokens)
    procs, env = {}, dict(os.environ)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    urls = {"vllm": f"http://127.0.0.1:{cfg.port}", "ours": f"http://127.0.0.1:{cfg.port + 1}"}
    cmds = {
        "vllm": vllm_cmd(model, cfg.port, EngineSettings(model=model), think),
        "ours": _ours_cmd(model, cfg.port + 1, urls["vllm"] if cfg.upstream else ""),
    }
    ready = {}
    try:
        for name in ("vllm", "ours"):  # one at a time: start-up time is part of the table
            log = open(logs / f"effort-bench-{name}.log", "w")
            procs[name] = subprocess.Popen(cmds[name], stdout=log, stderr=subprocess.STDOUT, env=env)
            ready[name] = wait_ready(urls[name], procs[name])
        for name in urls:  # warm-up
            asyncio.run(_scenario(urls[name], questions[:8], 4, False, cfg.max_tokens, budget))
        results: dict[tuple, dict[str, list[dict]]] = {}
        for conc in cfg.levels:
            for stream in (False, True):
                key = (conc, stream)
                results[key] = {"vllm": [], "ours": []}
                for rep in range(cfg.repeats):  # A B, B A, …: neither server always runs right after the other
                    for name in _order(rep):
                        results[key][name].append(
                            asyncio.run(
                                _scenario(urls[name], questions[: sizes[conc]], conc, stream, cfg.max_tokens, budget)
                            )
                        )
        paired = (
            {
                stream: asyncio.run(_paired(urls, questions[: cfg.requests], stream, cfg.max_tokens, budget))
                for stream in (False, True)
            }
            if 1 in cfg.levels
            else {}
        )
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    note = f"Requests per run: {', '.join(f'{n} at concurrency {c}' for c, n in sizes.items())}; {cfg.repeats} repeats a scenario."
    table = _table(results, ready, cfg.upstream, note + ("\n" + paired_line(paired) if paired else ""))
    print(table)
    if cfg.out:
        Path(cfg.out).write_text(table)
    return table


def _table(results, ready, upstream: bool = False, note: str = "") -> str:
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    lines = [
        "| concurrency | stream | server | output tok/s | p50 e2e (s) | p99 e2e (s) | p50 TTFT (s) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for (conc, stream), by in results.items():
        vals = {n: {k: med(by[n], k) for k in ("throughput", "p50", "p99", "ttft50")} for n in by}
        for n in ("vllm", "ours"):
            v = vals[n]
            lines.append(
                f"| {conc} | {'yes' if stream else 'no'} | {n} | {v['throughput']:.0f} | {v['p50']:.3f} | "
                f"{v['p99']:.3f} | {v['ttft50']:.3f} |"
            )
        r = {k: statistics.median(o[k] / v[k] for o, v in zip(by["ours"], by["vllm"])) for k in vals["ours"]}
        lines.append(
            f"| {conc} | {'yes' if stream else 'no'} | **ours / vLLM** | **{r['throughput']:.2f}** | "
            f"**{r['p50']:.2f}** | {r['p99']:.2f} | {r['ttft50']:.2f} |"
        )
    lines.append("")
    lines.append(
        "Values: medians over repeats; ours / vLLM: the median of the per-repeat ratios (the two runs of "
        "a repeat are back to back)."
    )
    if upstream:
        lines.append(
            "Gateway mode: `vllm` = vLLM's server called directly, `ours` = the same server through "
            "`effort serve --upstream`."
        )
    if note:
        lines.append(note)
    lines.append(f"Start-up to ready: vLLM {ready['vllm']:.1f} s, ours {ready['ours']:.1f} s.")
    return "\n".join(lines) + "\n"
