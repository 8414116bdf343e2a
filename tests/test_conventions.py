"""The other conventions for the effort dial, on the live server with the official client:
OpenRouter's `reasoning` object, `chat_template_kwargs` (and a template's own no-think mode),
`include_reasoning`, `reasoning_effort: "max"`. Errors for these are in test_server's table."""

from pathlib import Path

import pytest
from effort_server.training.tasks import DigitsTask

MODEL = "effort-tiny"
QWEN3_TEMPLATE = Path(__file__).resolve().parent / "fixtures" / "qwen3_chat_template.jinja"


def chat(client, question, stream=False, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, extra_body=extra, stream=stream
    )


@pytest.fixture(scope="module")
def question():
    return max(DigitsTask().problems("test", 20, seed=41), key=lambda p: p.difficulty).question


def reasoning_tokens(r):
    return r.usage.completion_tokens_details.reasoning_tokens


@pytest.mark.parametrize(
    "extra,applied,requested",
    [
        ({"reasoning": {"effort": "none"}}, 0.0, "none"),
        ({"reasoning": {"enabled": False}}, 0.0, False),
        ({"chat_template_kwargs": {"enable_thinking": False}}, 0.0, False),
        ({"reasoning": {"effort": "low"}}, 0.25, "low"),
        ({"reasoning_effort": "max"}, 1.0, "max"),
        ({"reasoning": {"enabled": True}}, 1.0, None),
        ({"chat_template_kwargs": {"enable_thinking": True}}, 1.0, None),
    ],
    ids=lambda v: str(v),
)
def test_every_convention_reaches_the_policy(client, question, extra, applied, requested):
    r = chat(client, question, **extra)
    rep = r.model_extra["effort"]
    assert rep["applied"] == applied and rep["requested"] == requested, rep
    assert "\\boxed{" in r.choices[0].message.content
    if applied == 0:
        assert reasoning_tokens(r) == 0 and rep["thinking_budget"] == 0 and rep["choice"].endswith("@none")
    else:
        assert reasoning_tokens(r) > 0


def test_openrouter_max_tokens_caps_reasoning(client, question):
    r = chat(client, question, reasoning={"max_tokens": 5})
    assert reasoning_tokens(r) <= 5 and r.model_extra["effort"]["thinking_budget"] == 5
    both = chat(client, question, reasoning={"max_tokens": 9}, thinking_token_budget=3)
    assert reasoning_tokens(both) <= 3 and both.model_extra["effort"]["thinking_budget"] == 3


@pytest.mark.parametrize("extra", [{"include_reasoning": False}, {"reasoning": {"exclude": True}}])
def test_reasoning_can_be_hidden_but_is_still_counted(client, question, extra):
    shown = chat(client, question)
    hidden = chat(client, question, **extra)
    m = hidden.choices[0].message
    assert m.reasoning is None and m.model_extra.get("reasoning_content") is None
    assert m.content == shown.choices[0].message.content
    assert reasoning_tokens(hidden) == reasoning_tokens(shown) > 0
    chunks = list(chat(client, question, stream=True, stream_options={"include_usage": True}, **extra))
    assert not any(c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning") for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == m.content
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == reasoning_tokens(shown)


def test_template_kwargs_reach_the_template(client, question):
    """A variable the template does not use changes nothing; the request still renders."""
    a, b = chat(client, question), chat(client, question, chat_template_kwargs={"custom_flag": 1})
    assert a.choices[0].message.content == b.choices[0].message.content and a.usage == b.usage


@pytest.fixture(scope="module")
def qwen3_service(model_dir):
    """The server's prompt building (no engine) with Qwen3's real chat template (on the embedded
    model's byte-level tokenizer: the rendered text round-trips)."""
    from effort_server.server.config import ServerSettings
    from effort_server.server.engine import EngineSettings
    from effort_server.server.lifecycle import has_thinking_switch
    from effort_server.server.service import Service
    from transformers import AutoTokenizer

    svc = Service(ServerSettings(router="none"), EngineSettings())
    svc.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    svc.tokenizer.chat_template = QWEN3_TEMPLATE.read_text()
    svc.template_switch = has_thinking_switch(svc.tokenizer)
    return svc


@pytest.mark.parametrize(
    "body,no_think",
    [
        ({"reasoning_effort": "none"}, True),  # effort 0 uses the template's own switch
        ({"effort": 0}, True),
        ({"chat_template_kwargs": {"enable_thinking": False}}, True),
        ({"effort": "low"}, False),
        ({}, False),
    ],
)
def test_effort_zero_uses_the_templates_no_think_mode(qwen3_service, body, no_think):
    from effort_server.server.protocol import ChatCompletionRequest

    svc = qwen3_service
    assert svc.template_switch
    req = ChatCompletionRequest(model=svc.base_name, messages=[{"role": "user", "content": "hi"}], **body)
    d = svc.policy.decide(
        model=None, effort=req.effort, reasoning_effort=req.reasoning_effort, enable_thinking=req.enable_thinking()
    )
    text = svc.tokenizer.decode(svc._chat_prompt(req)(None, d))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") == no_think, text
