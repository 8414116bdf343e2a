"""The orchestrator: request → `EffortDecision` → vLLM generation → response (+ metrics).

Routes only parse and delegate here. One `Service` owns the in-process `AsyncLLM`, the
adapter registry, the policy and the metrics. Every generation goes through `_generate`,
whose `finally` aborts the engine request if it did not finish — so a client that disconnects
(streaming or not) frees its engine slot at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from ..contract.manifest import ModelManifest
from ..contract.markers import Markers, split_ids
from ..contract.scoring import BASE, Router, RouterError
from .config import ServerSettings
from .engine import EngineSettings, default_adapter_dir, default_model, engine_kwargs, fork_engine_core, prepare_env
from .errors import BadRequest, ContextTooLong, EngineUnavailable, ModelNotFound
from .limits import Admission, Timeout
from .logprobs import TokenSplitter, chat_logprobs, completion_logprobs, from_engine
from .metrics import Metrics, stat_logger_factory
from .policy import EffortDecision, Policy
from .protocol import (
    SAMPLING_EXTRAS,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    ChunkWriter,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionTokensDetails,
    EffortReport,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)
from .reasoning import StopWatcher, StreamSplitter, tokens_past
from .registry import Adapter, scan
from .routes import History

log = logging.getLogger("effort.service")


@dataclass
class _Choice:
    ids: list[int] = field(default_factory=list)
    reasoning: str = ""
    answer: str = ""
    finish_reason: str | None = None
    lp_reasoning: list = field(default_factory=list)  # logprobs.Entry of each token, when asked for
    lp_answer: list = field(default_factory=list)


def load_router(spec: str, adapter_paths: list[str]) -> Router | None:
    """The router named by `spec`; by default the `router` folder of the first adapters path when
    present (a broken default router is skipped with a log line; a named one must load)."""
    if spec == "none":
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
    log.info(
        "router: %d routes (%s), margin %g",
        len(router.routes),
        ", ".join(r.label for r in router.routes),
        router.margin,
    )
    return router


# arguments of apply_chat_template that the server sets (a request's chat_template_kwargs may not)
RESERVED_TEMPLATE_ARGS = frozenset(
    {
        "conversation",
        "messages",
        "tokenize",
        "add_generation_prompt",
        "return_dict",
        "continue_final_message",
        "chat_template",
        "tools",
        "documents",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


def _has_thinking_switch(tokenizer) -> bool:
    """The chat template reads `enable_thinking` (Qwen3 and others: false renders a closed,
    empty thinking block, the model's own no-think mode)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default", "")
    return "enable_thinking" in (template or "")


def _fits_int64(value) -> bool:
    """Every integer in a JSON value fits in 64 bits (what the engine process can be sent)."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return all(_fits_int64(v) for v in value.values())
    if isinstance(value, list):
        return all(_fits_int64(v) for v in value)
    return True


@dataclass
class _Prepared:
    prompt_ids: list[int]
    decision: EffortDecision
    adapter: Adapter | None
    params: object  # vllm SamplingParams
    in_think: bool
    model_name: str
    t0: float
    text: str = ""
    deadline: float = float("inf")
    logprobs: int | None = None  # alternatives per token to return; None: no logprobs
    constraint: str | None = None  # the request field that carried a structured-answer constraint
    stop: list[str] = field(default_factory=list)  # stop strings, applied to the answer
    show_reasoning: bool = True  # false: the reasoning text stays out of the response (usage counts it)


class _Released:
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


class Service:
    def __init__(self, settings: ServerSettings, engine: EngineSettings):
        self.settings, self.engine_settings = settings, engine
        self.model_path = engine.model or default_model()
        try:
            self.manifest = ModelManifest.read(self.model_path)
        except Exception:  # a user's model without our manifest: generic defaults
            self.manifest = ModelManifest(name=Path(self.model_path).name)
        self.base_name = settings.served_model_name or self.manifest.name or Path(self.model_path).name
        paths = [p for p in settings.adapters.split(",") if p.strip()] or [default_adapter_dir()]
        self.adapters = scan(paths)
        full = settings.full_effort_tokens or self.manifest.default_full_effort_tokens
        self.router = load_router(settings.router, paths)
        self.history = History(settings.router_history) if self.router is not None else None
        self.policy = Policy(settings, self.adapters, self.base_name, full, self.router, self.history, self.manifest)
        self.metrics = Metrics()
        self.admission = Admission(settings.max_concurrent, settings.max_queue)
        self.llm = None
        self.tokenizer = None
        self.template_switch = False  # the chat template has its own enable_thinking switch
        self.structured_ready = False  # in-process: the think markers are single tokens (see think_parser)
        self.ready = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.upstream:
            await self._start_gateway()
            return
        t0 = time.perf_counter()
        prepare_env(self.engine_settings.model or default_model())
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        t1 = time.perf_counter()
        kw = engine_kwargs(self.engine_settings, self.manifest.think_start, self.manifest.think_end)
        kw["max_lora_rank"] = max([kw["max_lora_rank"], *(self._rank(a) for a in self.adapters.values())])
        vllm_config = AsyncEngineArgs(**kw).create_engine_config(UsageContext.OPENAI_API_SERVER)
        t2 = time.perf_counter()
        with fork_engine_core():
            self.llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[stat_logger_factory(self.metrics)])
        log.info(
            "engine up in %.1f s: vLLM import %.1f s, config %.1f s, engine core %.1f s",
            time.perf_counter() - t0,
            t1 - t0,
            t2 - t1,
            time.perf_counter() - t2,
        )
        self.tokenizer = self.llm.tokenizer
        self.template_switch = _has_thinking_switch(self.tokenizer)
        self.markers = Markers.from_tokenizer(self.tokenizer, self.manifest.think_start, self.manifest.think_end)
        vocab = self.tokenizer.get_vocab()
        self.structured_ready = all(m in vocab for m in (self.manifest.think_start, self.manifest.think_end))
        self.max_model_len = self.engine_settings.max_model_len
        self.ready = True
        log.info("ready: model %s, adapters %s", self.base_name, ", ".join(self.adapters) or "none")

    async def _start_gateway(self) -> None:
        """Gateway mode: the model's tokenizer here (prompts, accounting), generation upstream."""
        from transformers import AutoTokenizer
        from vllm import SamplingParams  # noqa: F401 - requests build vLLM's SamplingParams; import it before ready

        from .upstream import UpstreamEngine, UpstreamError

        s = self.settings
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.template_switch = _has_thinking_switch(self.tokenizer)
        self.markers = Markers.from_tokenizer(self.tokenizer, self.manifest.think_start, self.manifest.think_end)
        self.max_model_len = self.engine_settings.max_model_len
        self.llm = UpstreamEngine(s.upstream, s.upstream_model, s.upstream_names(), s.upstream_timeout)
        try:
            served = await self.llm.check()
            if not s.upstream_model:
                self.llm.model = served[0] if served else self.base_name
            missing = [self.llm.names.get(a, a) for a in self.adapters if self.llm.names.get(a, a) not in served]
            if missing:
                log.warning("upstream %s does not serve adapter(s) %s", s.upstream, ", ".join(missing))
        except UpstreamError as e:
            self.llm.model = s.upstream_model or self.base_name
            log.warning("%s; starting anyway (requests get 502 until it answers)", e.message)
        self.llm.start_gauges(self.metrics)
        self.structured_ready = True  # the upstream applies the constraint (after thinking with its reasoning parser)
        self.ready = True
        log.info(
            "ready (gateway to %s, model %s): adapters %s",
            s.upstream,
            self.llm.model,
            ", ".join(self.adapters) or "none",
        )

    @staticmethod
    def _rank(a: Adapter) -> int:
        import json

        try:
            return int(json.loads((a.path / "adapter_config.json").read_text()).get("r", 8))
        except Exception:
            return 8

    async def shutdown(self) -> None:
        self.ready = False
        if self.llm is not None:
            if hasattr(self.llm, "aclose"):  # gateway
                await self.llm.aclose()
            else:
                self.llm.shutdown()
            self.llm = None

    def models(self) -> ModelList:
        cards = [ModelCard(id=self.base_name, root=self.model_path, kind="base")]
        cards += [
            ModelCard(id=a.name, root=str(a.path), parent=self.base_name, kind=a.manifest.kind)
            for a in self.adapters.values()
        ]
        return ModelList(data=cards)

    def model(self, model_id: str) -> ModelCard:
        for card in self.models().data:
            if card.id == model_id:
                return card
        raise ModelNotFound(f"the model {model_id!r} does not exist; GET /v1/models lists the served ones", "model")

    # -- preparation: the one place a request becomes generation settings -------------------
    def _prepare(self, req, prompt_ids_fn, in_think: bool, text: str = "", arrived: float | None = None) -> _Prepared:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        t0 = time.perf_counter()
        if not self.ready:
            raise EngineUnavailable("the engine is not ready")
        thinking = req.enable_thinking() if isinstance(req, ChatCompletionRequest) else None
        decide = lambda max_tokens: self.policy.decide(  # noqa: E731 - same request, one more cap
            model=req.model,
            effort=req.effort,
            reasoning_effort=req.reasoning_effort,
            thinking_token_budget=req.thinking_token_budget,
            max_tokens=max_tokens,
            prompt=text,
            reasoning=req.reasoning_options(),
            enable_thinking=thinking,
            adapters=req.adapters,
        )
        limit = req.output_limit()
        s = self.settings
        if req.n > s.max_n:
            raise BadRequest(f"n={req.n} is over this server's limit of {s.max_n}", "n", code="limit_exceeded")
        if s.max_output_tokens and limit is not None and limit > s.max_output_tokens:
            raise BadRequest(
                f"max_tokens={limit} is over this server's limit of {s.max_output_tokens}",
                "max_tokens",
                code="limit_exceeded",
            )
        decision = decide(limit)
        adapter = self.adapters.get(decision.adapter) if decision.adapter else None
        prompt_ids = prompt_ids_fn(adapter, decision)
        if s.max_prompt_tokens and len(prompt_ids) > s.max_prompt_tokens:
            raise ContextTooLong(
                f"the prompt has {len(prompt_ids)} tokens; this server's limit is {s.max_prompt_tokens}",
                "messages" if hasattr(req, "messages") else "prompt",
            )
        room = self.max_model_len - len(prompt_ids)
        if room <= 0 or (limit is not None and limit > room):
            want = f"{len(prompt_ids)} in the prompt" + (f" + {limit} for the completion" if limit else "")
            raise ContextTooLong(
                f"this model's maximum context length is {self.max_model_len} tokens; the request needs {want}",
                "messages" if hasattr(req, "messages") else "prompt",
            )
        if limit is None:  # no output limit: the rest of the context is the limit, reserve included
            room = min(room, s.max_output_tokens or room)
            decision = decide(room)
        max_tokens = limit or room
        # stop strings apply to the answer only, so they are ours to watch (`_pieces`), not vLLM's;
        # a request with them streams from the engine even when its client does not, to stop on time
        stop = [x for x in ([req.stop] if isinstance(req.stop, str) else req.stop or []) if x]
        n_logprobs = self._check_logprobs(req)
        # precedence: request → OpenAI default (temperature 1, top_p 1)
        try:
            params = SamplingParams(
                n=req.n,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                max_tokens=max_tokens,
                # streaming needs every step; a non-streamed request only its final output (like
                # vLLM's own server), which spares a wake-up and a split per token per request
                seed=req.seed,
                skip_special_tokens=False,
                output_kind=RequestOutputKind.DELTA if req.stream or stop else RequestOutputKind.FINAL_ONLY,
                thinking_token_budget=-1 if decision.thinking_budget is None else decision.thinking_budget,
                logprobs=n_logprobs,
                logit_bias=self._logit_bias(req.logit_bias),
                structured_outputs=self._structured(req),
                **self._extras(req),
            )
        except (ValueError, TypeError, VLLMClientError) as e:  # vLLM's own checks (e.g. n > 1 with greedy sampling)
            msg = e.args[0] if e.args else str(e)
            param = getattr(e, "parameter", None) or next(
                (
                    f
                    for f in ("n", "temperature", "top_p", "seed", "max_tokens", *SAMPLING_EXTRAS)
                    if msg.startswith(f + " ")
                ),
                None,
            )
            raise BadRequest(msg.split("\n")[0], param, code="invalid_request") from None
        return _Prepared(
            prompt_ids,
            decision,
            adapter,
            params,
            in_think,
            req.model or self.base_name,
            t0,
            text,
            (arrived or t0) + s.request_timeout,
            n_logprobs,
            None
            if params.structured_outputs is None
            else "structured_outputs"
            if req.structured_outputs is not None
            else "response_format",
            stop,
            req.show_reasoning(),
        )

    @staticmethod
    def _check_logprobs(req) -> int | None:
        if isinstance(req, ChatCompletionRequest) and req.top_logprobs is not None and not req.logprobs:
            raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
        if isinstance(req, CompletionRequest) and req.echo and req.logprobs is not None:
            raise BadRequest(
                "echo with logprobs (the prompt's logprobs) is not supported; drop one of them", "logprobs"
            )
        return req.n_logprobs()

    def _structured(self, req):
        """OpenAI's `response_format` or vLLM's `structured_outputs` as vLLM's constraint (None: free text)."""
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import StructuredOutputsParams

        rf, so = req.response_format, req.structured_outputs
        if rf is not None and rf.type == "text":
            rf = None
        if rf is None and so is None:
            return None
        param = "structured_outputs" if so is not None else "response_format"
        if rf is not None and so is not None:
            raise BadRequest("give either response_format or structured_outputs, not both", param)
        if not self.structured_ready:
            raise BadRequest(
                "structured answers need think markers that are single tokens of this model's "
                f"vocabulary ({self.manifest.think_start!r} / {self.manifest.think_end!r} are not)",
                param,
            )
        if not _fits_int64((so or rf).model_dump(by_alias=True)):
            raise BadRequest("an integer in the constraint is outside the 64-bit range", param)
        if so is not None:
            spec = so.model_dump(exclude_none=True, by_alias=True)
        elif rf.type == "json_object":
            spec = {"json_object": True}
        elif rf.json_schema is None or rf.json_schema.schema_ is None:
            raise BadRequest("response_format of type json_schema needs json_schema.schema", "response_format")
        else:
            spec = {"json": rf.json_schema.schema_}
        try:
            return StructuredOutputsParams(**spec)
        except (ValueError, VLLMClientError) as e:  # none or several constraints
            raise BadRequest(str(e).split("\n")[0], param) from None

    def _extras(self, req) -> dict:
        extras = {f: getattr(req, f) for f in SAMPLING_EXTRAS if getattr(req, f) is not None}
        if extras.get("top_k", 0) > len(self.tokenizer):  # more than the vocabulary: no top-k at all
            extras["top_k"] = -1
        return extras

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        """OpenAI's `logit_bias` (token id as a string → bias in [-100, 100]) as vLLM takes it."""
        if not bias:
            return None
        vocab = len(self.tokenizer)
        out = {}
        for key, value in bias.items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab:
                raise BadRequest(
                    f"logit_bias key {key!r} is not a token id of this model (0..{vocab - 1})", "logit_bias"
                )
            if not -100 <= value <= 100:
                raise BadRequest(f"logit_bias value {value} for token {key} is outside [-100, 100]", "logit_bias")
            out[int(key)] = float(value)
        return out

    def _template_kwargs(self, req: ChatCompletionRequest) -> dict:
        """`chat_template_kwargs`, checked: the template's own variables, none of the arguments
        the server sets itself."""
        kw = dict(req.chat_template_kwargs or {})
        for key in kw:
            if key in RESERVED_TEMPLATE_ARGS:
                raise BadRequest(
                    f"chat_template_kwargs may not set {key!r} (the server sets it)", f"chat_template_kwargs.{key}"
                )
        if "enable_thinking" in kw and not isinstance(kw["enable_thinking"], bool):
            raise BadRequest(
                "chat_template_kwargs.enable_thinking must be true or false", "chat_template_kwargs.enable_thinking"
            )
        return kw

    def _chat_prompt(self, req: ChatCompletionRequest):
        kwargs = self._template_kwargs(req)

        def build(adapter: Adapter | None, decision: EffortDecision) -> list[int]:
            msgs = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in req.messages]
            if adapter is not None and adapter.manifest.control.kind != "none":
                last = (
                    max(i for i, m in enumerate(msgs) if m["role"] == "user")
                    if any(m["role"] == "user" for m in msgs)
                    else len(msgs) - 1
                )
                msgs[last]["content"] = adapter.manifest.control.apply(msgs[last]["content"], decision.control_effort)
            kw = dict(kwargs)
            if decision.thinking_budget == 0 and self.template_switch and "enable_thinking" not in kw:
                kw["enable_thinking"] = False  # the template's own no-think mode
            try:
                text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)
            except Exception as e:
                param = "chat_template_kwargs" if kwargs else "messages"
                raise BadRequest(f"messages cannot be rendered with the model's chat template: {e}", param) from None
            return self.tokenizer.encode(text, add_special_tokens=False)

        return build

    def _completion_prompt(self, req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise BadRequest("one prompt per request is supported; send a list of one string or a string", "prompt")
        text = prompts[0]
        if not text:
            raise BadRequest("prompt must not be empty", "prompt")
        s, e = self.manifest.think_start, self.manifest.think_end
        in_think = text.rfind(s) > text.rfind(e)

        def build(adapter: Adapter | None, decision: EffortDecision) -> list[int]:
            body = adapter.manifest.control.apply(text, decision.control_effort) if adapter is not None else text
            return self.tokenizer.encode(body, add_special_tokens=False)

        return build, in_think, text

    # -- generation -------------------------------------------------------------------------
    async def _generate(self, p: _Prepared) -> AsyncIterator:
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

    async def _deadline(self, gen, p: _Prepared):
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
                        f"the request took longer than this server's limit of {self.settings.request_timeout:g} s"
                    ) from None
                yield item
        finally:
            await gen.aclose()

    async def _collect(self, p: _Prepared) -> tuple[dict[int, _Choice], float | None]:
        choices = {i: _Choice() for i in range(p.params.n)}
        timing: dict = {}
        async for i, r, a, _, lp in self._pieces(p, choices, timing):
            choices[i].reasoning += r
            choices[i].answer += a
            if lp is not None:
                choices[i].lp_reasoning += lp[0]
                choices[i].lp_answer += lp[1]
        return choices, timing.get("ttft")

    async def _collect_or_abort(self, p: _Prepared, http_request):
        """Collect a non-streamed result; if the client goes away first, cancel (which aborts)."""
        task = asyncio.ensure_future(self._collect(p))
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

    def _account(self, endpoint: str, p: _Prepared, choices: dict[int, _Choice], ttft: float | None):
        splits = [split_ids(c.ids, self.markers, p.in_think) for c in choices.values()]
        budget = p.decision.thinking_budget
        hits = [budget is not None and s.reasoning_tokens >= budget and (s.closed or s.started) for s in splits]
        completion = sum(len(c.ids) for c in choices.values())
        usage = Usage(
            prompt_tokens=len(p.prompt_ids),
            completion_tokens=completion,
            total_tokens=len(p.prompt_ids) + completion,
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=sum(s.reasoning_tokens for s in splits)
            ),
        )
        d = p.decision
        reasoning = [s.reasoning_tokens for s in splits]
        fraction = None
        if d.full_effort_tokens:
            fraction = round(sum(reasoning) / len(reasoning) / d.full_effort_tokens, 4)
        report = EffortReport(
            requested=d.requested,
            applied=d.effort,
            adapter=d.adapter,
            thinking_budget=budget,
            budget_hit=any(hits),
            route=d.route,
            predicted=d.predicted,
            reason=d.reason,
            choice=d.choice,
            spend=d.spend,
            full_effort_tokens=None if d.full_effort_tokens is None else round(d.full_effort_tokens, 1),
            realised_fraction=fraction,
        )
        self.metrics.observe(
            endpoint,
            d,
            d.adapter or "base",
            [c.finish_reason for c in choices.values()],
            len(p.prompt_ids),
            [s.reasoning_tokens for s in splits],
            [s.answer_tokens for s in splits],
            hits,
            time.perf_counter() - p.t0,
            ttft,
            completion,
        )
        self._remember(p, splits, hits)
        return usage, report

    def _remember(self, p: _Prepared, splits, hits) -> None:
        """Online correction: a natural (not budget-cut, closed) full-effort length goes into the
        history, for the next time this prompt comes to this model."""
        d = p.decision
        if self.history is None or d.predicted is None or "@" in d.choice:  # only a model at its full length
            return
        natural = [s.reasoning_tokens for s, h in zip(splits, hits) if s.closed and not h]
        if natural:
            self.history.record(d.adapter or BASE, p.text, sum(natural) / len(natural))

    # -- endpoints --------------------------------------------------------------------------
    async def _admit(self):
        try:
            return await self.admission.enter()
        except Exception:
            self.metrics.rejections.labels("overloaded").inc()
            raise

    def _released(self, gen, ticket):
        return _Released(gen, self.admission, ticket)

    async def chat(self, req: ChatCompletionRequest, http_request=None):
        arrived = time.perf_counter()
        if req.tools and req.tool_choice != "none":
            raise BadRequest(
                'tool calling is not supported by this server; send no tools or tool_choice "none"',
                "tools",
                code="unsupported",
            )
        ticket = await self._admit()
        try:
            users = [m.text() for m in req.messages if m.role == "user"]
            p = self._prepare(
                req, self._chat_prompt(req), in_think=False, text=users[-1] if users else "", arrived=arrived
            )
            if req.stream:
                gen, ticket = self._released(self._chat_stream(req, p), ticket), None
                return gen
            choices, ttft = await self._collect_or_abort(p, http_request)
        finally:
            if ticket is not None:
                self.admission.release(ticket)
        usage, report = self._account("chat", p, choices, ttft)
        out = []
        for i, c in choices.items():
            shown = p.show_reasoning and split_ids(c.ids, self.markers, p.in_think).started
            lp_r = c.lp_reasoning if p.show_reasoning else []
            out.append(
                ChatChoice(
                    index=i,
                    finish_reason=c.finish_reason,
                    message=ResponseMessage(
                        content=c.answer,
                        reasoning=c.reasoning if shown else None,
                        reasoning_content=c.reasoning if shown else None,
                    ),
                    logprobs=None if p.logprobs is None else ChatLogprobs(**chat_logprobs(lp_r, c.lp_answer)),
                )
            )
        return ChatCompletion(model=p.model_name, choices=out, usage=usage, effort=report)

    async def _pieces(self, p: _Prepared, choices: dict[int, _Choice], timing: dict):
        """Stream (index, reasoning piece, answer piece, finish reason, logprobs) as the engine
        produces them — logprobs: None, or the (reasoning, answer) `Entry` lists of the piece's
        tokens; fills `choices` with the token ids and `timing["ttft"]` on the way."""
        from vllm.sampling_params import RequestOutputKind

        splitters = {
            i: StreamSplitter(self.manifest.think_start, self.manifest.think_end, p.in_think) for i in choices
        }
        k = p.logprobs
        token_splitters = {i: TokenSplitter(self.markers, p.in_think) for i in choices} if k is not None else {}
        watchers = {i: StopWatcher(p.stop) for i in choices} if p.stop else {}
        final_only = p.params.output_kind == RequestOutputKind.FINAL_ONLY
        done: set[int] = set()
        gen = self._deadline(self._generate(p), p)
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

    async def _chat_stream(self, req: ChatCompletionRequest, p: _Prepared) -> AsyncIterator[str]:
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        choices = {i: _Choice() for i in range(p.params.n)}
        timing: dict = {}

        w = ChunkWriter("chat.completion.chunk", rid, created, p.model_name)
        for i in choices:
            yield w.chat(i, role="assistant", content="")
        async for i, r, a, finish, lp in self._pieces(p, choices, timing):
            if not p.show_reasoning:
                r, lp = "", None if lp is None else ([], lp[1])
            lp_json = chat_logprobs(*lp) if lp is not None and (lp[0] or lp[1]) else None
            if r or a or lp_json:
                yield w.chat(i, content=a or None, reasoning=r or None, logprobs=lp_json)
            if finish:
                yield w.chat(i, finish_reason=finish)
        usage, report = self._account("chat", p, choices, timing.get("ttft"))
        final = ChatCompletionChunk(
            id=rid,
            created=created,
            model=p.model_name,
            choices=[],
            usage=usage if include_usage else None,
            effort=report,
        )
        yield f"data: {final.model_dump_json(exclude_none=True)}\n\n"
        yield "data: [DONE]\n\n"

    async def completions(self, req: CompletionRequest, http_request=None):
        arrived = time.perf_counter()
        ticket = await self._admit()
        try:
            build, in_think, text = self._completion_prompt(req)
            p = self._prepare(req, build, in_think=in_think, text=text, arrived=arrived)
            prefix = text if req.echo else ""
            if req.stream:
                gen, ticket = self._released(self._completion_stream(req, p, prefix), ticket), None
                return gen
            choices, ttft = await self._collect_or_abort(p, http_request)
        finally:
            if ticket is not None:
                self.admission.release(ticket)
        usage, report = self._account("completions", p, choices, ttft)
        out = []
        for i, c in choices.items():
            shown = p.show_reasoning and (in_think or split_ids(c.ids, self.markers, p.in_think).started)
            out.append(
                CompletionChoice(
                    index=i,
                    text=prefix + c.answer,
                    finish_reason=c.finish_reason,
                    reasoning=c.reasoning if shown else None,
                    reasoning_content=c.reasoning if shown else None,
                    logprobs=None
                    if p.logprobs is None
                    else CompletionLogprobs(**completion_logprobs(c.lp_answer, len(prefix), p.logprobs)),
                )
            )
        return Completion(model=p.model_name, choices=out, usage=usage, effort=report)

    async def _completion_stream(self, req: CompletionRequest, p: _Prepared, prefix: str) -> AsyncIterator[str]:
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        choices = {i: _Choice() for i in range(p.params.n)}
        timing: dict = {}

        w = ChunkWriter("text_completion", rid, created, p.model_name)
        if prefix:
            for i in choices:
                yield w.completion(i, prefix)
        offsets = {i: len(prefix) for i in choices}
        async for i, r, a, finish, lp in self._pieces(p, choices, timing):
            lp_json = None
            if lp is not None and lp[1]:
                lp_json = completion_logprobs(lp[1], offsets[i], p.logprobs)
                offsets[i] += sum(len(e.token) for e in lp[1])
            r = r if p.show_reasoning else ""
            if r or a or finish or lp_json:
                yield w.completion(i, a, r or None, finish, lp_json)
        usage, report = self._account("completions", p, choices, timing.get("ttft"))
        final = CompletionChunk(
            id=rid,
            created=created,
            model=p.model_name,
            choices=[],
            usage=usage if include_usage else None,
            effort=report,
        )
        yield f"data: {final.model_dump_json(exclude_none=True)}\n\n"
        yield "data: [DONE]\n\n"
