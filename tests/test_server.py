"""The live server, driven by the official `openai` client (sync and streaming)."""

import httpx
import pytest
from transformers import AutoTokenizer

from training.tasks import DigitsTask

MODEL = "effort-tiny"


def ask(client, question, **kw):
    extra = {k: kw.pop(k) for k in ("effort", "thinking_token_budget", "reasoning_effort") if k in kw}
    return client.chat.completions.create(
        model=kw.pop("model", MODEL), messages=[{"role": "user", "content": question}],
        temperature=kw.pop("temperature", 0), extra_body=extra or None, **kw)


def reasoning_tokens(r):
    return r.usage.completion_tokens_details.reasoning_tokens


@pytest.fixture(scope="module")
def prompts():
    return DigitsTask().problems("test", 24, seed=11)


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL and "noisy" in ids and "broken" not in ids


def test_effort_levels_are_monotonic(client, prompts):
    means = {}
    for level in ("low", "medium", "high"):
        rs = [ask(client, p.question, effort=level) for p in prompts]
        means[level] = sum(map(reasoning_tokens, rs)) / len(rs)
        assert all(r.model_extra["effort"]["applied"] == {"low": 0.25, "medium": 0.5, "high": 1.0}[level] for r in rs)
    assert means["low"] < means["medium"] < means["high"], means


@pytest.mark.parametrize("k", [0, 3, 10])
def test_thinking_budget_is_a_hard_cap(client, prompts, k):
    for p in prompts[:6]:
        r = ask(client, p.question, thinking_token_budget=k)
        assert reasoning_tokens(r) <= k
        assert "\\boxed{" in r.choices[0].message.content
        rep = r.model_extra["effort"]
        assert rep["thinking_budget"] == k and rep["budget_hit"] == (reasoning_tokens(r) >= k)


def test_reasoning_effort_none_answers_without_thinking(client, prompts):
    r = ask(client, prompts[0].question, reasoning_effort="none")
    assert reasoning_tokens(r) == 0
    assert r.model_extra["effort"]["applied"] == 0
    assert "\\boxed{" in r.choices[0].message.content


def test_small_max_tokens_still_answers(client, prompts):
    hard = max(prompts, key=lambda p: p.difficulty)
    natural = reasoning_tokens(ask(client, hard.question))
    r = ask(client, hard.question, max_tokens=natural // 2)
    assert r.usage.completion_tokens <= natural // 2
    assert "\\boxed{" in r.choices[0].message.content  # the reserve kept room for the answer
    assert r.model_extra["effort"]["budget_hit"]


def test_usage_matches_returned_texts(client, prompts, model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    for p in prompts[:5]:
        r = ask(client, p.question, effort="medium")
        m = r.choices[0].message
        n_reason = len(tok.encode(m.reasoning, add_special_tokens=False))
        n_answer = len(tok.encode(m.content, add_special_tokens=False))
        assert reasoning_tokens(r) == n_reason
        assert m.model_extra["reasoning_content"] == m.reasoning
        # completion = <think> + reasoning + </think> + answer + end-of-sequence
        assert r.usage.completion_tokens == n_reason + n_answer + 3
        prompt = tok.apply_chat_template([{"role": "user", "content": p.question}], add_generation_prompt=True,
                                         tokenize=False)
        assert r.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_adapter_by_name_changes_output(client, prompts):
    base = [ask(client, p.question).choices[0].message.reasoning for p in prompts[:5]]
    lora = [ask(client, p.question, model="noisy") for p in prompts[:5]]
    assert [r.choices[0].message.reasoning for r in lora] != base
    assert all(r.model_extra["effort"]["adapter"] == "noisy" and r.model == "noisy" for r in lora)


def test_stream_equals_non_stream(client, prompts):
    for p in prompts[:4]:
        for effort in ("low", "high"):
            full = ask(client, p.question, effort=effort, seed=1)
            chunks = list(ask(client, p.question, effort=effort, seed=1, stream=True,
                              stream_options={"include_usage": True}))
            reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning") or "" for c in chunks if c.choices)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert reasoning == full.choices[0].message.reasoning
            assert content == full.choices[0].message.content
            last = chunks[-1]
            assert last.usage.completion_tokens == full.usage.completion_tokens
            assert last.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens(full)
            assert last.model_extra["effort"]["thinking_budget"] == full.model_extra["effort"]["thinking_budget"]
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_n_choices_and_sampling(client, prompts, model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    r = ask(client, prompts[0].question, n=3, temperature=1.0, seed=5)
    assert len(r.choices) == 3 and {c.index for c in r.choices} == {0, 1, 2}
    per_choice = [len(tok.encode(c.message.reasoning or "", add_special_tokens=False)) for c in r.choices]
    assert reasoning_tokens(r) == sum(per_choice)  # usage sums over the choices
    again = ask(client, prompts[0].question, n=3, temperature=1.0, seed=5)
    assert [c.message.reasoning for c in again.choices] == [c.message.reasoning for c in r.choices]


def test_completions_endpoint(client, prompts, model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": prompts[0].question}], add_generation_prompt=True,
                                      tokenize=False)
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=200,
                                  extra_body={"thinking_token_budget": 4})
    assert r.usage.completion_tokens_details.reasoning_tokens <= 4
    assert "\\boxed{" in r.choices[0].text and r.model_extra["effort"]["thinking_budget"] == 4
    stream = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=200, stream=True,
                                            extra_body={"thinking_token_budget": 4}))
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text


DOCUMENTED = ["effort_requests_total", "effort_e2e_request_latency_seconds", "effort_time_to_first_token_seconds",
              "effort_time_per_output_token_seconds", "effort_prompt_tokens", "effort_reasoning_tokens",
              "effort_answer_tokens", "effort_thinking_budget_tokens", "effort_budget_hits_total",
              "effort_tokens_saved_total", "effort_request_errors_total"]


def _scrape(server):
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(httpx.get(f"{server}/metrics").text):
        for s in fam.samples:
            if s.name.endswith(("_count", "_total")) or fam.type in ("gauge", "counter"):
                out[s.name] = out.get(s.name, 0) + s.value
    return out


def test_metrics_move(client, server, prompts):
    before = _scrape(server)
    ask(client, prompts[0].question, effort="low")
    ask(client, prompts[1].question, thinking_token_budget=2)
    with pytest.raises(Exception):
        ask(client, prompts[1].question, effort="turbo")
    after = _scrape(server)
    for name in DOCUMENTED:
        key = name if name.endswith("_total") else f"{name}_count"
        assert after.get(key, 0) > before.get(key, 0), name
    for gauge in ("effort_requests_running", "effort_requests_waiting", "effort_requests_in_flight"):
        assert gauge in after
    assert "effort_router_decisions_total" in httpx.get(f"{server}/metrics").text


LONG = "a1 " * 2000


@pytest.mark.parametrize("body,status,param", [
    ({"effort": 1.5}, 400, "effort"),
    ({"effort": "turbo"}, 400, "effort"),
    ({"effort": "auto", "model": "noisy"}, 400, "effort"),
    ({"reasoning_effort": "max"}, 400, "reasoning_effort"),
    ({"thinking_token_budget": -1}, 400, "thinking_token_budget"),
    ({"model": "ghost"}, 404, "model"),
    ({"model": "../noisy"}, 404, "model"),
    ({"messages": None}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
    ({"max_tokens": 5000}, 400, "messages"),
    ({"n": 0}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"),
    ({"n": 2, "temperature": 0}, 400, "n"),
], ids=["effort-1.5", "effort-turbo", "auto-no-route", "reasoning-effort-bad", "negative-budget", "unknown-model",
        "path-model", "null-messages", "empty-messages", "prompt-too-long", "max-tokens-over-context", "n-zero",
        "negative-temperature", "n-greedy"])
def test_bad_input_gets_openai_error(server, body, status, param):
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "a1 b2"}], **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    r = httpx.post(f"{server}/v1/chat/completions", json=payload, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'"x"'], ids=["malformed", "empty", "array", "string"])
def test_malformed_json_is_400(server, raw):
    r = httpx.post(f"{server}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json(), r.text


def test_unknown_route_is_openai_404(server):
    r = httpx.get(f"{server}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_health(server):
    body = httpx.get(f"{server}/health").json()
    assert body["status"] == "ok" and "noisy" in body["adapters"]
