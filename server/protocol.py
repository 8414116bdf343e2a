"""OpenAI wire models for the endpoints we serve, field for field, then our extensions.

Unknown request fields are accepted and ignored, as the OpenAI API does. Our additions are in
the marked blocks: `effort`, `reasoning_effort`, `thinking_token_budget` on requests;
`reasoning` / `reasoning_content` on messages and deltas, `completion_tokens_details`, and the
top-level `effort` report on responses.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    # strict types as JSON sends them (no "5" -> 5, no 5.5 -> int); unknown fields are ignored
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # the call a tool message answers
    # -- extension: an earlier assistant turn's reasoning, as our responses carry it
    reasoning: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict))
        return self.content or ""

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it: `developer` as `system`; an assistant turn's
        reasoning as `reasoning_content` (Qwen3's template keeps it in the turns after the last
        user message — a tool loop's — and drops it before; templates without the field ignore it)."""
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        reasoning = self.reasoning_content or self.reasoning
        if self.role == "assistant" and reasoning:
            msg["reasoning_content"] = reasoning
        if self.role == "assistant" and self.tool_calls:
            msg["tool_calls"] = [_template_call(c) for c in self.tool_calls]
        if self.role == "tool" and self.tool_call_id:
            msg["tool_call_id"] = self.tool_call_id
        return msg


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as chat templates read it: the arguments as a mapping where they parse (as
    vLLM gives them), with the OpenAI fields kept."""
    fn = dict(call.get("function") or {})
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            fn["arguments"] = json.loads(args)
        except ValueError:
            pass
    return {**call, "function": fn}


class JsonSchema(_Request):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class StructuredOutputs(_Request):
    """vLLM's own field (its server takes the same): exactly one constraint, checked by vLLM."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None


class ReasoningOptions(_Request):
    """OpenRouter's `reasoning` object: the same dial under other names."""

    effort: str | None = None  # an effort name, as `reasoning_effort`
    max_tokens: int | None = Field(None, ge=0)  # a cap on reasoning tokens, as `thinking_token_budget`
    exclude: bool | None = None  # true: leave the reasoning text out of the response (still counted)
    enabled: bool | None = None  # false: no thinking; true: the server default effort


# sampling fields that go to vLLM as they come, when given (in gateway mode: to the upstream)
SAMPLING_EXTRAS = ("presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty", "min_tokens")


class _Sampling(_Request):
    model: str | None = None
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # a 64-bit integer, as OpenAI documents
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # vLLM's sampling extras (its own server takes them too)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    min_tokens: int | None = Field(None, ge=0)
    # structured answers: the grammar applies to the answer, after the thinking
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # --- effort-server extensions -------------------------------------------------------
    effort: float | str | None = Field(None, description="number in [0, 1], 'low' | 'medium' | 'high', or 'auto'")
    reasoning_effort: str | None = Field(
        None, description="OpenAI names: none, minimal, low, medium, high, xhigh, and max (alias of effort)"
    )
    thinking_token_budget: int | None = Field(None, ge=0, description="hard cap on reasoning tokens; always honoured")
    reasoning: ReasoningOptions | None = Field(None, description="OpenRouter's {effort, max_tokens, exclude, enabled}")
    include_reasoning: bool | None = Field(
        None, description="false: leave the reasoning text out of the response (usage still counts it)"
    )
    adapters: Literal["auto", "none"] | None = Field(
        None,
        description="for a request on the base model's name: 'auto' (default) lets the server answer "
        "with any adapter, 'none' with the base model alone",
    )

    def reasoning_options(self) -> dict | None:
        return None if self.reasoning is None else self.reasoning.model_dump(exclude_none=True)

    def show_reasoning(self) -> bool:
        return self.include_reasoning is not False and not (self.reasoning and self.reasoning.exclude)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None  # accepted only to say no: this server does not call tools
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="passed to the chat template; enable_thinking false means effort 0"
    )

    def enable_thinking(self) -> bool | None:
        v = (self.chat_template_kwargs or {}).get("enable_thinking")
        return v if isinstance(v, bool) else None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def n_logprobs(self) -> int | None:
        """How many alternatives per token to return (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def output_limit(self) -> int | None:
        return self.max_tokens

    def n_logprobs(self) -> int | None:
        return self.logprobs


# --- responses ----------------------------------------------------------------------------
class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


class EffortReport(BaseModel):
    """What the policy decided for this request (extension)."""

    requested: float | str | None
    applied: float
    adapter: str | None
    thinking_budget: int | None
    budget_hit: bool
    route: Literal["fixed", "auto"]
    predicted: dict[str, Any] | None = None
    reason: str
    choice: str = Field(
        description="the option run: a model (dler), e1 at a control (e1@0.62), a model under "
        "a budget (base@budget) or without thinking (base@none)"
    )
    spend: int | None = Field(None, description="reasoning tokens the effort allows (None for auto)")
    full_effort_tokens: float | None = Field(None, description="the base model's predicted full-effort reasoning")
    realised_fraction: float | None = Field(
        None, description="reasoning tokens / full_effort_tokens (mean of choices)"
    )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    """`content`: the answer's tokens, as OpenAI; `reasoning` (extension): the reasoning's tokens
    (the think markers are in neither, as in the texts)."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None
    reasoning: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape, over the tokens of `text`."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    effort: EffortReport


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    effort: EffortReport | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    effort: EffortReport


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    effort: EffortReport | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "effort-server"
    root: str | None = None
    parent: str | None = None
    kind: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# --- streaming: one SSE line per token, so the per-chunk JSON is written directly ----------
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ChunkWriter:
    """The SSE lines of one stream's token chunks, byte for byte what `ChatCompletionChunk` /
    `CompletionChunk` would dump (``exclude_none``), without building a pydantic model per token
    (the models stay the schema; tests check the two agree). Field order follows the models."""

    def __init__(self, obj: Literal["chat.completion.chunk", "text_completion"], id: str, created: int, model: str):
        self.head = f'data: {{"id":{_encode(id)},"object":"{obj}","created":{int(created)},"model":{_encode(model)},"choices":[{{"index":'

    def chat(
        self,
        index: int,
        role: str | None = None,
        content: str | None = None,
        reasoning: str | None = None,
        finish_reason: str | None = None,
        logprobs: dict | None = None,
    ) -> str:
        """A chat delta; `reasoning` fills both `reasoning` and `reasoning_content`; `logprobs` is
        the choice's logprobs object as JSON-ready data."""
        delta = {}
        if role is not None:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        if reasoning is not None:
            delta["reasoning"] = delta["reasoning_content"] = reasoning
        finish = f',"finish_reason":{_encode(finish_reason)}' if finish_reason is not None else ""
        if logprobs is not None:
            finish += f',"logprobs":{_encode(logprobs)}'
        return f'{self.head}{index},"delta":{_encode(delta)}{finish}}}]}}\n\n'

    def completion(
        self,
        index: int,
        text: str,
        reasoning: str | None = None,
        finish_reason: str | None = None,
        logprobs: dict | None = None,
    ) -> str:
        tail = f',"finish_reason":{_encode(finish_reason)}' if finish_reason is not None else ""
        if logprobs is not None:
            tail += f',"logprobs":{_encode(logprobs)}'
        if reasoning is not None:
            r = _encode(reasoning)
            tail += f',"reasoning":{r},"reasoning_content":{r}'
        return f'{self.head}{index},"text":{_encode(text)}{tail}}}]}}\n\n'
