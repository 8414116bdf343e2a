"""Request → generation settings: the checks and the translation into vLLM's `SamplingParams`.

Pure functions of the request and the model (vocabulary size, context length, markers); the
policy's `EffortDecision` comes in, `Prepared` (everything one generation needs) goes out of
`Service.prepare`. Every bad field ends as a `BadRequest` naming it, before the engine sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import ServerSettings
from .errors import BadRequest, ContextTooLong
from .policy import EffortDecision
from .protocol import SAMPLING_EXTRAS, ChatCompletionRequest, CompletionRequest
from .registry import Adapter

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


@dataclass
class Prepared:
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


def check_limits(req, settings: ServerSettings) -> int | None:
    """The request's output limit (None: none given), checked against the server's limits."""
    limit = req.output_limit()
    if req.n > settings.max_n:
        raise BadRequest(f"n={req.n} is over this server's limit of {settings.max_n}", "n", code="limit_exceeded")
    if settings.max_output_tokens and limit is not None and limit > settings.max_output_tokens:
        raise BadRequest(
            f"max_tokens={limit} is over this server's limit of {settings.max_output_tokens}",
            "max_tokens",
            code="limit_exceeded",
        )
    return limit


def context_room(n_prompt: int, limit: int | None, max_model_len: int, settings: ServerSettings, param: str) -> int:
    """The tokens left for the completion after the prompt; a prompt or limit that does not fit → 400."""
    if settings.max_prompt_tokens and n_prompt > settings.max_prompt_tokens:
        raise ContextTooLong(
            f"the prompt has {n_prompt} tokens; this server's limit is {settings.max_prompt_tokens}", param
        )
    room = max_model_len - n_prompt
    if room <= 0 or (limit is not None and limit > room):
        want = f"{n_prompt} in the prompt" + (f" + {limit} for the completion" if limit else "")
        raise ContextTooLong(
            f"this model's maximum context length is {max_model_len} tokens; the request needs {want}", param
        )
    return room if limit is not None else min(room, settings.max_output_tokens or room)


def stop_strings(req) -> list[str]:
    """Stop strings (they apply to the answer only, so the server watches them, not vLLM)."""
    return [x for x in ([req.stop] if isinstance(req.stop, str) else req.stop or []) if x]


def check_logprobs(req) -> int | None:
    if isinstance(req, ChatCompletionRequest) and req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    if isinstance(req, CompletionRequest) and req.echo and req.logprobs is not None:
        raise BadRequest("echo with logprobs (the prompt's logprobs) is not supported; drop one of them", "logprobs")
    return req.n_logprobs()


def fits_int64(value) -> bool:
    """Every integer in a JSON value fits in 64 bits (what the engine process can be sent)."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return all(fits_int64(v) for v in value.values())
    if isinstance(value, list):
        return all(fits_int64(v) for v in value)
    return True


def structured(req, ready: bool, markers: tuple[str, str]):
    """OpenAI's `response_format` or vLLM's `structured_outputs` as vLLM's constraint (None: free
    text); `ready`: the think markers are single tokens, so the constraint can start after them."""
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
    if not ready:
        raise BadRequest(
            "structured answers need think markers that are single tokens of this model's "
            f"vocabulary ({markers[0]!r} / {markers[1]!r} are not)",
            param,
        )
    if not fits_int64((so or rf).model_dump(by_alias=True)):
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


def extras(req, vocab: int) -> dict:
    """vLLM's own sampling fields the request set (`top_k` beyond the vocabulary: no top-k)."""
    out = {f: getattr(req, f) for f in SAMPLING_EXTRAS if getattr(req, f) is not None}
    if out.get("top_k", 0) > vocab:
        out["top_k"] = -1
    return out


def logit_bias(bias: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    """OpenAI's `logit_bias` (token id as a string → bias in [-100, 100]) as vLLM takes it."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab:
            raise BadRequest(f"logit_bias key {key!r} is not a token id of this model (0..{vocab - 1})", "logit_bias")
        if not -100 <= value <= 100:
            raise BadRequest(f"logit_bias value {value} for token {key} is outside [-100, 100]", "logit_bias")
        out[int(key)] = float(value)
    return out


def template_kwargs(req: ChatCompletionRequest) -> dict:
    """`chat_template_kwargs`, checked: the template's own variables, none of the arguments the
    server sets itself."""
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


def sampling_params(
    req, decision: EffortDecision, max_tokens: int, n_logprobs, deltas: bool, constraint, vocab: int, carried: int = 0
):
    """vLLM's `SamplingParams` (OpenAI's defaults: temperature 1, top_p 1); vLLM's own checks → 400.
    `deltas`: the engine reports every step (streaming, stop strings), else only the final output.
    `carried`: thinking tokens the prompt left open (vLLM counts them against the budget; we do not)."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            n=req.n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            max_tokens=max_tokens,
            seed=req.seed,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA if deltas else RequestOutputKind.FINAL_ONLY,
            thinking_token_budget=-1 if decision.thinking_budget is None else decision.thinking_budget + carried,
            logprobs=n_logprobs,
            logit_bias=logit_bias(req.logit_bias, vocab),
            structured_outputs=constraint,
            **extras(req, vocab),
        )
    except (ValueError, TypeError, VLLMClientError) as e:  # e.g. n > 1 with greedy sampling
        msg = e.args[0] if e.args else str(e)
        fields = ("n", "temperature", "top_p", "seed", "max_tokens", *SAMPLING_EXTRAS)
        param = getattr(e, "parameter", None) or next((f for f in fields if msg.startswith(f + " ")), None)
        raise BadRequest(msg.split("\n")[0], param, code="invalid_request") from None
