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
pooled `httpx.AsyncClient` serves all requests; the engine gauges (running / waiting) are read
from the upstream's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from .errors import APIError

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


@dataclass
class _RequestOutput:
    outputs: list[_Out]
    finished: bool = False
    metrics: _Metrics = field(default_factory=_Metrics)


def _outs(body: dict) -> list[_Out]:
    """The choices of an upstream completion response or stream chunk (with token ids)."""
    return [_Out(c["index"], list(c.get("token_ids") or []), c.get("text") or "", c.get("finish_reason"))
            for c in body.get("choices", [])]


def sampling_to_json(params) -> dict:
    """The fields of a vLLM `SamplingParams` the OpenAI completions API carries."""
    body = {"n": params.n, "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_tokens, "skip_special_tokens": False, "return_token_ids": True}
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    budget = getattr(params, "thinking_token_budget", None)
    if budget is not None and budget >= 0:
        body["thinking_token_budget"] = int(budget)
    return body


class UpstreamEngine:
    def __init__(self, url: str, model: str, names: dict[str, str] | None = None, timeout: float = 600.0,
                 connect_timeout: float = 5.0, max_connections: int = 256, api_key: str = ""):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.model, self.names = model, names or {}
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
        self._gauges: asyncio.Task | None = None

    @contextmanager
    def _transport_errors(self):
        """httpx timeouts → 504, any other transport failure → 502."""
        try:
            yield
        except httpx.TimeoutException:
            raise UpstreamError(f"upstream {self.url} timed out", 504, "upstream_timeout") from None
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self.url} failed: {e.__class__.__name__}: {e}") from None

    async def check(self) -> list[str]:
        """The upstream's served model names (raises UpstreamError when it does not answer)."""
        with self._transport_errors():
            r = await self.client.get("/v1/models")
        if r.status_code != 200:
            raise UpstreamError(f"upstream {self.url}/v1/models answered {r.status_code}")
        return [m["id"] for m in r.json().get("data", [])]

    def model_for(self, lora_request) -> str:
        if lora_request is None:
            return self.model
        return self.names.get(lora_request.lora_name, lora_request.lora_name)

    async def generate(self, prompt: dict, params, request_id: str, lora_request=None):
        from vllm.sampling_params import RequestOutputKind

        final_only = params.output_kind == RequestOutputKind.FINAL_ONLY
        body = {"model": self.model_for(lora_request), "prompt": list(prompt["prompt_token_ids"]),
                "stream": not final_only, **sampling_to_json(params)}
        t0 = time.perf_counter()
        first = True
        if final_only:  # one upstream response, as vLLM's own server answers a non-streamed request
            with self._transport_errors():
                r = await self.client.post("/v1/completions", json=body, headers={"x-request-id": request_id})
            if r.status_code != 200:
                raise self._error(r)
            outs = _outs(r.json())
            yield _RequestOutput(outs, finished=True)
            return
        with self._transport_errors():
            async with self.client.stream("POST", "/v1/completions", json=body,
                                          headers={"x-request-id": request_id}) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise self._error(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        raise UpstreamError(f"upstream error: {err.get('message', err)}")
                    outs = _outs(chunk)
                    if not outs:
                        continue
                    out = _RequestOutput(outs)
                    if first:
                        out.metrics.first_token_latency = time.perf_counter() - t0
                        first = False
                    yield out
        yield _RequestOutput([], finished=True)

    @staticmethod
    def _error(r: httpx.Response) -> UpstreamError:
        try:
            err = r.json().get("error", {})
            msg = err.get("message") if isinstance(err, dict) else str(err)
        except (json.JSONDecodeError, AttributeError):
            msg = r.text[:500]
        status = r.status_code if 400 <= r.status_code < 500 and r.status_code != 404 else 502
        if r.status_code == 404:  # the upstream does not serve that model / adapter
            msg = f"the upstream does not serve this model: {msg}"
        return UpstreamError(f"upstream answered {r.status_code}: {msg}", status,
                             "upstream_rejected" if status < 500 else "upstream_error")

    async def abort(self, request_id: str) -> None:
        """Nothing to do: leaving the stream closes the connection and vLLM aborts on disconnect."""

    def start_gauges(self, metrics, every: float = 2.0) -> None:
        async def poll():
            while True:
                try:
                    r = await self.client.get("/metrics", timeout=2)
                    vals = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
                    for line in r.text.splitlines():
                        name = line.split("{", 1)[0].split(" ", 1)[0]
                        if name in vals:
                            vals[name] += float(line.rsplit(" ", 1)[1])
                    metrics.running.set(vals["vllm:num_requests_running"])
                    metrics.waiting.set(vals["vllm:num_requests_waiting"])
                except (httpx.HTTPError, ValueError, IndexError):
                    pass
                await asyncio.sleep(every)
        self._gauges = asyncio.get_running_loop().create_task(poll())

    async def aclose(self) -> None:
        if self._gauges is not None:
            self._gauges.cancel()
        await self.client.aclose()
