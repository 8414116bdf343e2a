"""Generation: a `Prepared` request through the engine, as reasoning / answer pieces per choice.

`Generation` wraps the engine (in-process `AsyncLLM` or the gateway's `UpstreamEngine`, the same
`generate` / `abort` interface) with what every endpoint needs: the engine request aborted in a
`finally` whenever it did not finish (a disconnected client frees its slot at once), the
request's deadline (504), vLLM's validation errors as 400, the reasoning / answer split of the
text and of the logprobs, and stop strings applied to the answer only. `pieces` yields
(index, reasoning piece, answer piece, finish reason, logprobs) and fills each `Choice`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..contract.markers import Markers
from .errors import BadRequest
from .limits import Timeout
from .logprobs import TokenSplitter, from_engine
from .metrics import Metrics
from .reasoning import StopWatcher, StreamSplitter, tokens_past
from .sampling import Prepared


@dataclass
class Choice:
    ids: list[int] = field(default_factory=list)
    reasoning: str = ""
    answer: str = ""
    finish_reason: str | None = None
    lp_reasoning: list = field(default_factory=list)  # logprobs.Entry of each token, when asked for
    lp_answer: list = field(default_factory=list)


class Released:
    """A stream that gives its admission slot back when it ends — finished, failed, cancelled
    by a disconnect, closed, or dropped without ever being iterated."""

    def __init__(self, gen, admission, ticket):
        self.gen, self.admission, self.ticket = gen, admission, ticket

    def _release(self) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.admission.release(ticket)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.gen.__anext__()
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        await self.gen.aclose()

    def __del__(self):
        self._release()


class Generation:
    def __init__(self, llm: Any, tokenizer: Any, markers: Markers, metrics: Metrics, request_timeout: float):
        self.llm, self.tokenizer, self.markers = llm, tokenizer, markers
        self.metrics, self.request_timeout = metrics, request_timeout

    async def generate(self, p: Prepared) -> AsyncIterator:
        from vllm.lora.request import LoRARequest

        rid = uuid.uuid4().hex
        lora = LoRARequest(p.adapter.name, p.adapter.lora_id, str(p.adapter.path)) if p.adapter else None
        finished = False
        self.metrics.in_flight.inc()
        try:
            async for out in self.llm.generate({"prompt_token_ids": p.prompt_ids}, p.params, rid, lora_request=lora):
                finished = out.finished
                yield out
        except Exception as e:  # vLLM's own validation of a request (e.g. compiling a grammar) → 400
            from vllm.exceptions import VLLMClientError

            if not isinstance(e, (ValueError, TypeError, VLLMClientError)):
                raise
            msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
            grammar = p.constraint and any(w in msg.lower() for w in ("grammar", "regex", "schema", "structured"))
            raise BadRequest(msg, getattr(e, "parameter", None) or (p.constraint if grammar else None)) from None
        finally:
            self.metrics.in_flight.dec()
            if not finished:
                await self.llm.abort(rid)

    async def until_deadline(self, gen, p: Prepared):
        """`gen`'s items until the request's deadline; then close it (which aborts the engine
        request) and raise 504. One timer per item, no extra task (this runs once per token)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + (p.deadline - time.perf_counter())
        try:
            while True:
                timer = asyncio.timeout_at(at)
                try:
                    async with timer:
                        item = await gen.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not timer.expired():
                        raise
                    self.metrics.rejections.labels("timeout").inc()
                    raise Timeout(
                        f"the request took longer than this server's limit of {self.request_timeout:g} s"
                    ) from None
                yield item
        finally:
            await gen.aclose()

    async def pieces(self, p: Prepared, choices: dict[int, Choice], timing: dict):
        """Stream (index, reasoning piece, answer piece, finish reason, logprobs) as the engine
        produces them — logprobs: None, or the (reasoning, answer) `Entry` lists of the piece's
        tokens; fills `choices` with the token ids and `timing["ttft"]` on the way."""
        from vllm.sampling_params import RequestOutputKind

        start, end = self.markers.start_text, self.markers.end_text
        splitters = {i: StreamSplitter(start, end, p.in_think) for i in choices}
        k = p.logprobs
        token_splitters = {i: TokenSplitter(self.markers, p.in_think) for i in choices} if k is not None else {}
        watchers = {i: StopWatcher(p.stop) for i in choices} if p.stop else {}
        final_only = p.params.output_kind == RequestOutputKind.FINAL_ONLY
        done: set[int] = set()
        gen = self.until_deadline(self.generate(p), p)
        try:
            async for out in gen:
                if final_only and timing.get("ttft") is None:  # the engine timed the first token
                    timing["ttft"] = getattr(getattr(out, "metrics", None), "first_token_latency", None) or None
                for o in out.outputs:
                    if o.index in done:  # stopped by a stop string: the rest is not ours to return
                        continue
                    c = choices[o.index]
                    if not final_only and timing.get("ttft") is None and o.token_ids:
                        timing["ttft"] = time.perf_counter() - p.t0
                    c.ids.extend(o.token_ids)
                    r, a = splitters[o.index].feed(o.text)
                    lp = None
                    if k is not None:
                        entries = getattr(o, "entries", None)  # the gateway's, already read
                        ts = token_splitters[o.index]
                        lp = ts.feed(entries if entries is not None else from_engine(o.token_ids, o.logprobs, k))
                    finish = o.finish_reason
                    if finish:
                        r2, a2 = splitters[o.index].flush()
                        r, a = r + r2, a + a2
                        if lp is not None:
                            lr, la = token_splitters[o.index].flush()
                            lp = (lp[0] + lr, lp[1] + la)
                    if watchers:
                        a, hit = watchers[o.index].feed(a, final=bool(finish))
                        if hit:  # what the piece carried past the stop string is not counted
                            n = tokens_past(self.tokenizer, o.token_ids, watchers[o.index].past)
                            if n:
                                del c.ids[len(c.ids) - n :]
                                if lp is not None:
                                    lp = (lp[0], lp[1][: max(0, len(lp[1]) - n)])
                        finish = "stop" if hit else finish
                    if finish:
                        c.finish_reason = finish
                        done.add(o.index)
                    yield o.index, r, a, finish, lp
                if watchers and len(done) == len(choices):
                    break  # every choice met a stop string: closing `gen` aborts the engine request
        finally:
            await gen.aclose()

    async def collect(self, p: Prepared) -> tuple[dict[int, Choice], float | None]:
        """The whole result of a non-streamed request: the choices and the time to first token."""
        choices = {i: Choice() for i in range(p.params.n)}
        timing: dict = {}
        async for i, r, a, _, lp in self.pieces(p, choices, timing):
            choices[i].reasoning += r
            choices[i].answer += a
            if lp is not None:
                choices[i].lp_reasoning += lp[0]
                choices[i].lp_answer += lp[1]
        return choices, timing.get("ttft")

    async def collect_or_abort(self, p: Prepared, http_request):
        """`collect`; if the client goes away first, cancel (which aborts the engine request)."""
        task = asyncio.ensure_future(self.collect(p))
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if http_request is not None and await http_request.is_disconnected():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                self.metrics.errors.labels("disconnect", "499").inc()
                raise asyncio.CancelledError("client disconnected")
