"""The orchestrator: request → `EffortDecision` → generation → response, one path for every API.

Routes parse and delegate here. `Service` owns the engine (`lifecycle`), the adapter registry,
the policy, the admission control and the metrics. Every endpoint runs `_serve`: admit →
`prepare` (the request checked and turned into a `Prepared` with the policy's decision,
`sampling`) → `Generation.pieces` (reasoning / answer pieces, the engine request aborted if it
does not finish, so a client that disconnects frees its slot) → `Accounting` (usage, effort
report, metrics) → the endpoint's response object or its SSE stream.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable

from ..contract.markers import Markers, open_thinking, split_ids
from ..contract.prompt import chat_ids
from . import sampling
from .accounting import Accounting
from .config import ServerSettings
from .engine import EngineSettings, default_adapter_dir, default_model, model_len
from .errors import BadRequest, EngineUnavailable, ModelNotFound
from .generation import Choice, Generation, Released
from .lifecycle import (
    close,
    has_thinking_switch,
    load_router,
    matching_adapters,
    model_manifest,
    open_engine,
    open_gateway,
)
from .limits import Admission
from .logprobs import chat_logprobs, completion_logprobs
from .metrics import Metrics
from .policy import EffortDecision, Policy
from .protocol import (
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
    ModelCard,
    ModelList,
    ResponseMessage,
)
from .registry import Adapter, scan
from .routes import UNMEASURED, History
from .sampling import Prepared

log = logging.getLogger("effort.service")

# builds a request's prompt ids once the policy has chosen the adapter and the effort
PromptBuilder = Callable[[Adapter | None, EffortDecision], list[int]]


class Service:
    def __init__(self, settings: ServerSettings, engine: EngineSettings):
        self.settings, self.engine_settings = settings, engine
        self.model_path = engine.model or default_model()
        self.manifest, self.measured = model_manifest(
            self.model_path, settings.think_start, settings.think_end, settings.reasoning_parser
        )
        self.base_name = settings.served_model_name or self.manifest.name or Path(self.model_path).name
        # the repository's adapters and router belong to the embedded model: other models get only the named ones
        embedded = Path(self.model_path).resolve() == Path(default_model()).resolve()
        paths = [p for p in settings.adapters.split(",") if p.strip()] or ([default_adapter_dir()] if embedded else [])
        self.adapters = matching_adapters(scan(paths), self.model_path, self.base_name)
        full = settings.full_effort_tokens or self.manifest.default_full_effort_tokens
        self.router = load_router(settings.router, paths)
        self.history = History(settings.router_history) if self.router is not None else None
        source = "full_effort_tokens setting" if settings.full_effort_tokens else "manifest"
        if not settings.full_effort_tokens and not self.measured:
            source = UNMEASURED
            log.warning("model %s has no manifest: full-effort length %d is an %s", self.model_path, full, source)
        self.policy = Policy(
            settings, self.adapters, self.base_name, full, self.router, self.history, self.manifest, source
        )
        self.metrics = Metrics()
        self.admission = Admission(settings.max_concurrent, settings.max_queue)
        self.llm = None
        self.tokenizer = None
        self.template_switch = False  # the chat template has its own enable_thinking switch
        self.structured_ready = False  # in-process: the think markers are single tokens (see think_parser)
        self.ready = False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.upstream:  # gateway mode: the model's tokenizer here (prompts, accounting), generation upstream
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self.llm = await open_gateway(s, self.base_name, self.adapters, self.metrics)
            self.structured_ready = True  # the upstream applies the constraint after thinking (its reasoning parser)
        else:
            self.llm = open_engine(self.engine_settings, self.manifest, self.adapters, self.metrics)
            self.tokenizer = self.llm.tokenizer
            vocab = self.tokenizer.get_vocab()
            self.structured_ready = all(m in vocab for m in (self.manifest.think_start, self.manifest.think_end))
        self.template_switch = has_thinking_switch(self.tokenizer)
        self.markers = Markers.from_tokenizer(self.tokenizer, self.manifest.think_start, self.manifest.think_end)
        config = getattr(self.llm, "model_config", None)  # the engine's choice where it made one
        self.max_model_len = getattr(config, "max_model_len", None) or model_len(self.engine_settings) or 1024
        self.generation = Generation(self.llm, self.tokenizer, self.markers, self.metrics, s.request_timeout)
        self.accounting = Accounting(self.markers, self.metrics, self.history)
        self.ready = True
        where = f" (gateway to {s.upstream}, model {self.llm.model})" if s.upstream else f": model {self.base_name}"
        log.info("ready%s, adapters %s", where, ", ".join(self.adapters) or "none")

    async def shutdown(self) -> None:
        self.ready = False
        if self.llm is not None:
            await close(self.llm)
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
    def prepare(self, req, build: PromptBuilder, text: str = "", arrived: float | None = None):
        """The request checked and decided: prompt ids, the policy's decision, `SamplingParams`."""
        t0 = time.perf_counter()
        if not self.ready:
            raise EngineUnavailable("the engine is not ready")
        thinking = req.enable_thinking() if isinstance(req, ChatCompletionRequest) else None

        def decide(max_tokens: int | None) -> EffortDecision:
            return self.policy.decide(
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

        s = self.settings
        limit = sampling.check_limits(req, s)
        decision = decide(limit)
        adapter = self.adapters.get(decision.adapter) if decision.adapter else None
        prompt_ids = build(adapter, decision)
        carried = open_thinking(prompt_ids, self.markers)  # R1 distills' prompt opens the thinking
        in_think = carried is not None
        param = "messages" if hasattr(req, "messages") else "prompt"
        room = sampling.context_room(len(prompt_ids), limit, self.max_model_len, s, param)
        if limit is None:  # no output limit: the rest of the context is the limit, reserve included
            decision = decide(room)
        stop = sampling.stop_strings(req)
        n_logprobs = sampling.check_logprobs(req)
        constraint = sampling.structured(
            req, self.structured_ready, (self.manifest.think_start, self.manifest.think_end)
        )
        # streaming needs every step; a non-streamed request only its final output (like vLLM's own
        # server); one with stop strings streams from the engine anyway, to stop on time
        deltas = bool(req.stream or stop)
        vocab = len(self.tokenizer)
        params = sampling.sampling_params(
            req, decision, limit or room, n_logprobs, deltas, constraint, vocab, carried or 0
        )
        constraint_field = None
        if constraint is not None:
            constraint_field = "structured_outputs" if req.structured_outputs is not None else "response_format"
        return Prepared(
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
            constraint_field,
            stop,
            req.show_reasoning(),
        )

    def _chat_prompt(self, req: ChatCompletionRequest) -> PromptBuilder:
        kwargs = sampling.template_kwargs(req)
        msgs = [m.for_template() for m in req.messages]

        def build(adapter: Adapter | None, decision: EffortDecision) -> list[int]:
            control = adapter.manifest.control if adapter is not None else None
            kw = dict(kwargs)
            if decision.thinking_budget == 0 and self.template_switch and "enable_thinking" not in kw:
                kw["enable_thinking"] = False  # the template's own no-think mode
            try:
                return chat_ids(self.tokenizer, msgs, control=control, effort=decision.control_effort, **kw)
            except Exception as e:
                param = "chat_template_kwargs" if kwargs else "messages"
                raise BadRequest(f"messages cannot be rendered with the model's chat template: {e}", param) from None

        return build

    def _completion_prompt(self, req: CompletionRequest) -> tuple[PromptBuilder, str]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise BadRequest("one prompt per request is supported; send a list of one string or a string", "prompt")
        text = prompts[0]
        if not text:
            raise BadRequest("prompt must not be empty", "prompt")

        def build(adapter: Adapter | None, decision: EffortDecision) -> list[int]:
            body = adapter.manifest.control.for_effort(text, decision.control_effort) if adapter is not None else text
            return self.tokenizer.encode(body, add_special_tokens=False)

        return build, text

    # -- the one request path ---------------------------------------------------------------
    async def _admit(self):
        try:
            return await self.admission.enter()
        except Exception:
            self.metrics.rejections.labels("overloaded").inc()
            raise

    async def _serve(self, api: str, req, build: PromptBuilder, text: str, http_request, respond, stream):
        """Admit, prepare, then either `stream(p)` (the SSE lines; the admission slot held until
        it ends) or collect the whole result and return `respond(p, choices, usage, report)`."""
        arrived = time.perf_counter()
        ticket = await self._admit()
        try:
            p = self.prepare(req, build, text=text, arrived=arrived)
            if req.stream:
                gen, ticket = Released(stream(p), self.admission, ticket), None
                return gen
            choices, ttft = await self.generation.collect_or_abort(p, http_request)
        finally:
            if ticket is not None:
                self.admission.release(ticket)
        return respond(p, choices, *self.accounting.account(api, p, choices, ttft))

    async def _sse(self, api: str, req, p: Prepared, opening: list[str], chunks, final) -> AsyncIterator[str]:
        """An SSE stream: the `opening` lines, `chunks(i, r, a, finish, lp)` per piece, then the
        `final(usage, report)` chunk (usage only with stream_options.include_usage) and [DONE]."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        choices = {i: Choice() for i in range(p.params.n)}
        timing: dict = {}
        for line in opening:
            yield line
        async for piece in self.generation.pieces(p, choices, timing):
            for line in chunks(*piece):
                yield line
        usage, report = self.accounting.account(api, p, choices, timing.get("ttft"))
        yield f"data: {final(usage if include_usage else None, report).model_dump_json(exclude_none=True)}\n\n"
        yield "data: [DONE]\n\n"

    def _shown(self, p: Prepared, c: Choice) -> bool:
        """The reasoning field is returned: asked for, and the model did think (or the prompt opened it)."""
        return p.show_reasoning and split_ids(c.ids, self.markers, p.in_think).started

    # -- endpoints --------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, http_request=None):
        if req.tools and req.tool_choice != "none":
            raise BadRequest(
                'tool calling is not supported by this server; send no tools or tool_choice "none"',
                "tools",
                code="unsupported",
            )
        users = [m.text() for m in req.messages if m.role == "user"]
        text = users[-1] if users else ""

        def respond(p: Prepared, choices: dict[int, Choice], usage, report) -> ChatCompletion:
            out = []
            for i, c in choices.items():
                shown = self._shown(p, c)
                lp_r = c.lp_reasoning if p.show_reasoning else []
                message = ResponseMessage(
                    content=c.answer,
                    reasoning=c.reasoning if shown else None,
                    reasoning_content=c.reasoning if shown else None,
                )
                lp = None if p.logprobs is None else ChatLogprobs(**chat_logprobs(lp_r, c.lp_answer))
                out.append(ChatChoice(index=i, finish_reason=c.finish_reason, message=message, logprobs=lp))
            return ChatCompletion(model=p.model_name, choices=out, usage=usage, effort=report)

        def stream(p: Prepared) -> AsyncIterator[str]:
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            w = ChunkWriter("chat.completion.chunk", rid, created, p.model_name)

            def chunks(i, r, a, finish, lp):
                if not p.show_reasoning:
                    r, lp = "", None if lp is None else ([], lp[1])
                lp_json = chat_logprobs(*lp) if lp is not None and (lp[0] or lp[1]) else None
                if r or a or lp_json:
                    yield w.chat(i, content=a or None, reasoning=r or None, logprobs=lp_json)
                if finish:
                    yield w.chat(i, finish_reason=finish)

            def final(usage, report):
                return ChatCompletionChunk(
                    id=rid, created=created, model=p.model_name, choices=[], usage=usage, effort=report
                )

            opening = [w.chat(i, role="assistant", content="") for i in range(p.params.n)]
            return self._sse("chat", req, p, opening, chunks, final)

        return await self._serve("chat", req, self._chat_prompt(req), text, http_request, respond, stream)

    async def completions(self, req: CompletionRequest, http_request=None):
        build, text = self._completion_prompt(req)
        prefix = text if req.echo else ""

        def respond(p: Prepared, choices: dict[int, Choice], usage, report) -> Completion:
            out = []
            for i, c in choices.items():
                shown = self._shown(p, c)
                lp = None
                if p.logprobs is not None:
                    lp = CompletionLogprobs(**completion_logprobs(c.lp_answer, len(prefix), p.logprobs))
                out.append(
                    CompletionChoice(
                        index=i,
                        text=prefix + c.answer,
                        finish_reason=c.finish_reason,
                        reasoning=c.reasoning if shown else None,
                        reasoning_content=c.reasoning if shown else None,
                        logprobs=lp,
                    )
                )
            return Completion(model=p.model_name, choices=out, usage=usage, effort=report)

        def stream(p: Prepared) -> AsyncIterator[str]:
            rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            w = ChunkWriter("text_completion", rid, created, p.model_name)
            offsets = {i: len(prefix) for i in range(p.params.n)}

            def chunks(i, r, a, finish, lp):
                lp_json = None
                if lp is not None and lp[1]:
                    lp_json = completion_logprobs(lp[1], offsets[i], p.logprobs)
                    offsets[i] += sum(len(e.token) for e in lp[1])
                r = r if p.show_reasoning else ""
                if r or a or finish or lp_json:
                    yield w.completion(i, a, r or None, finish, lp_json)

            def final(usage, report):
                return CompletionChunk(
                    id=rid, created=created, model=p.model_name, choices=[], usage=usage, effort=report
                )

            opening = [w.completion(i, prefix) for i in range(p.params.n)] if prefix else []
            return self._sse("completions", req, p, opening, chunks, final)

        return await self._serve("completions", req, build, text, http_request, respond, stream)
