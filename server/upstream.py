"""Gateway mode: the effort layer in front of an upstream OpenAI-compatible vLLM server or fleet.

`effort serve --upstream URL` keeps everything of ours — policy, router, budgets, accounting,
metrics, errors — and replaces the in-process engine with `UpstreamEngine`, which speaks the
same small interface the service uses (`generate` yielding vLLM-shaped outputs, `abort`,
`shutdown`). Each request goes upstream as a ``/v1/completions`` call (streamed when the client streams)
with the prompt as token ids (rendered here with the model's own chat template, so prompt accounting and adapter
controls are identical to in-process serving), the thinking budget as vLLM's
``thinking_token_budget``, and ``return_token_ids`` so reasoning tokens are counted from ids.
Adapters map to the upstream's LoRA model names (same name unless `upstream_models` maps them).
Closing the stream aborts the upstream request (vLLM aborts on disconnect). Connection errors
become 502, timeouts 504, the upstream's own 4xx come back with their status and message. One
pooled `aiohttp.ClientSession` serves all requests (its C parser relays a token stream at a
fraction of httpx's cost per chunk, which matters on the cores the engine also needs); the
engine gauges (running / waiting) are read from the upstream's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp

from .errors import APIError
from .logprobs import from_completion
from .protocol import SAMPLING_EXTRAS

log = logging.getLogger("effort.upstream")


class UpstreamError(APIError):
    def __init__(self, message: str, status: int = 502, code: str = "upstream_error"):
        super().__init__(message, param=None, code=code)
        self.status = status
        self.type = "upstream_error" if status >= 500 else "invalid_request_error"


@dataclass
class _Metrics:
    first_token_latency: float | None = None


@dataclass
class _Out:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    entries: list | None = None  # logprobs.Entry per token, when asked for


@dataclass
class _RequestOutput:
    outputs: list[_Out]
    finished: bool = False
    metrics: _Metrics = field(default_factory=_Metrics)


def _outs(body: dict, k: int | None = None) -> list[_Out]:
    """The choices of an upstream completion response or stream chunk (with token ids; with
    their logprobs read when `k` alternatives a token were asked for)."""
    out = []
    for c in body.get("choices", []):
        ids = list(c.get("token_ids") or [])
        entries = None if k is None else from_completion(ids, c.get("logprobs"), k)
        out.append(_Out(c["index"], ids, c.get("text") or "", c.get("finish_reason"), entries))
    return out


def _merge(line: bytes, merged: dict[int, _Out], k: int | None = None) -> bool:
    """Add one SSE line of an upstream completion stream to `merged` (the pieces of each choice
    that arrived together are relayed as one); True at ``[DONE]``."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    chunk = json.loads(data)
    if "error" in chunk:
        err = chunk["error"]
        raise UpstreamError(f"upstream error: {err.get('message', err) if isinstance(err, dict) else err}")
    for o in _outs(chunk, k):
        m = merged.get(o.index)
        if m is None:
            merged[o.index] = o
        else:
            m.token_ids += o.token_ids
            m.text += o.text
            m.finish_reason = o.finish_reason or m.finish_reason
            if o.entries is not None:
                m.entries = (m.entries or []) + o.entries
    return False


async def _arrived(content: aiohttp.StreamReader):
    """The complete lines of a stream, a list per read: all that had arrived by then (a last line
    without its newline comes at the end)."""
    rest = b""
    async for data in content.iter_any():
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if lines:
            yield lines
    if rest:
        yield [rest]


def sampling_to_json(params) -> dict:
    """The fields of a vLLM `SamplingParams` the OpenAI completions API carries (no `stop`: the
    service applies stop strings to the answer itself, as in-process)."""
    body = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "skip_special_tokens": False,
        "return_token_ids": True,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    budget = getattr(params, "thinking_token_budget", None)
    if budget is not None and budget >= 0:
        body["thinking_token_budget"] = int(budget)
    if params.logprobs is not None:
        body["logprobs"] = params.logprobs
    so = params.structured_outputs
    if so is not None:
        body["structured_outputs"] = {k: getattr(so, k) for k in _CONSTRAINTS if getattr(so, k) is not None}
    if params.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in params.logit_bias.items()}
    defaults = _default_params()
    for name in SAMPLING_EXTRAS:
        value = getattr(params, name)
        if value != getattr(defaults, name):
            body[name] = value
    return body


@functools.cache
def _default_params():
    from vllm import SamplingParams

    return SamplingParams()


_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")


class UpstreamEngine:
    def __init__(
        self,
        url: str,
        model: str,
        names: dict[str, str] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
        api_key: str = "",
    ):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.model, self.names = model, names or {}
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # `timeout` bounds each wait for the upstream (the response, then each piece of a stream), like
        # vLLM's own clients; a generation may stream for longer in total
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._gauges: asyncio.Task | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        """The pooled session (made on first use, inside the server's event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                read_bufsize=2**20,
                connector=aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60),
            )
        return self._session

    @contextmanager
    def _transport_errors(self):
        """Timeouts → 504, any other transport failure → 502."""
        try:
            yield
        except asyncio.TimeoutError:  # aiohttp's ServerTimeoutError is one
            raise UpstreamError(f"upstream {self.url} timed out", 504, "upstream_timeout") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"upstream {self.url} failed: {e.__class__.__name__}: {e}") from None

    async def check(self) -> list[str]:
        """The upstream's served model names (raises UpstreamError when it does not answer)."""
        with self._transport_errors():
            async with self.client.get(self.url + "/v1/models") as r:
                if r.status != 200:
                    raise UpstreamError(f"upstream {self.url}/v1/models answered {r.status}")
                body = await r.json(content_type=None)
        return [m["id"] for m in body.get("data", [])]

    def model_for(self, lora_request) -> str:
        if lora_request is None:
            return self.model
        return self.names.get(lora_request.lora_name, lora_request.lora_name)

    async def generate(self, prompt: dict, params, request_id: str, lora_request=None):
        from vllm.sampling_params import RequestOutputKind

        final_only = params.output_kind == RequestOutputKind.FINAL_ONLY
        body = {
            "model": self.model_for(lora_request),
            "prompt": list(prompt["prompt_token_ids"]),
            "stream": not final_only,
            **sampling_to_json(params),
        }
        t0 = time.perf_counter()
        first = True
        url, headers = self.url + "/v1/completions", {"x-request-id": request_id}
        with self._transport_errors():
            async with self.client.post(url, json=body, headers=headers) as r:
                if r.status != 200:
                    raise await self._error(r)
                k = params.logprobs
                if final_only:  # one upstream response, as vLLM's own server answers a non-streamed request
                    yield _RequestOutput(_outs(await r.json(content_type=None), k), finished=True)
                    return
                async for lines in _arrived(r.content):
                    merged: dict[int, _Out] = {}
                    done = any(_merge(line, merged, k) for line in lines)  # stops at [DONE]
                    if merged:
                        out = _RequestOutput(list(merged.values()))
                        if first:
                            out.metrics.first_token_latency = time.perf_counter() - t0
                            first = False
                        yield out
                    if done:
                        break
        yield _RequestOutput([], finished=True)

    @staticmethod
    async def _error(r: aiohttp.ClientResponse) -> UpstreamError:
        text = await r.text(errors="replace")
        try:
            err = json.loads(text).get("error", {})
            msg = err.get("message") if isinstance(err, dict) else str(err)
        except (json.JSONDecodeError, AttributeError):
            msg = text[:500]
        status = r.status if 400 <= r.status < 500 and r.status != 404 else 502
        if r.status == 404:  # the upstream does not serve that model / adapter
            msg = f"the upstream does not serve this model: {msg}"
        return UpstreamError(
            f"upstream answered {r.status}: {msg}", status, "upstream_rejected" if status < 500 else "upstream_error"
        )

    async def abort(self, request_id: str) -> None:
        """Nothing to do: leaving the stream closes the connection and vLLM aborts on disconnect."""

    def start_gauges(self, metrics, every: float = 2.0) -> None:
        async def poll():
            while True:
                try:
                    async with self.client.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        text = await r.text()
                    vals = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
                    for line in text.splitlines():
                        name = line.split("{", 1)[0].split(" ", 1)[0]
                        if name in vals:
                            vals[name] += float(line.rsplit(" ", 1)[1])
                    metrics.running.set(vals["vllm:num_requests_running"])
                    metrics.waiting.set(vals["vllm:num_requests_waiting"])
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, IndexError):
                    pass
                await asyncio.sleep(every)

        self._gauges = asyncio.get_running_loop().create_task(poll())

    async def aclose(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
        if self._session is not None:
            await self._session.close()
