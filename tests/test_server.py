"""The live server, driven by the official `openai` client (sync and streaming)."""

import httpx
import pytest
from effort_server.training.tasks import DigitsTask
from effort_server.training.tasks.digits import TERSE_MAX

MODEL = "effort-tiny"


def ask(client, question, **kw):
    extra = {k: kw.pop(k) for k in ("effort", "thinking_token_budget", "reasoning_effort", "adapters") if k in kw}
    extra.update(kw.pop("extra_body", {}))
    return client.chat.completions.create(
        model=kw.pop("model", MODEL),
        messages=[{"role": "user", "content": question}],
        temperature=kw.pop("temperature", 0),
        extra_body=extra or None,
        **kw,
    )


def reasoning_tokens(r):
    return r.usage.completion_tokens_details.reasoning_tokens


@pytest.fixture(scope="module")
def prompts():
    return DigitsTask().problems("test", 24, seed=11)


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL and "noisy" in ids and "broken" not in ids
    assert client.models.retrieve("noisy").id == "noisy" and client.models.retrieve(MODEL).id == MODEL
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("ghost")
    assert e.value.body["code"] == "model_not_found"


def correct(r, p) -> bool:
    return DigitsTask().grade(r.choices[0].message.content, p)


@pytest.fixture(scope="module")
def by_effort(client):
    """A seeded set of held-out prompts at every effort, on the base model's name (the policy may
    answer with any adapter) and on a named adapter."""
    probs = DigitsTask().problems("test", 30, seed=31)
    out = {}
    for model in (MODEL, "dler"):
        for e in (0, 0.1, 0.25, 0.5, 0.75, 1.0):
            out[model, e] = [(p, ask(client, p.question, effort=e, model=model)) for p in probs]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", [MODEL, "dler"])
def test_accuracy_never_falls_as_effort_rises(by_effort, model):
    efforts = (0, 0.1, 0.25, 0.5, 0.75, 1.0)
    acc = [sum(correct(r, p) for p, r in by_effort[model, e]) / len(by_effort[model, e]) for e in efforts]
    assert all(b >= a for a, b in zip(acc, acc[1:])), dict(zip(efforts, acc))
    assert acc[0] < 0.5 and acc[-1] >= 0.95, acc  # no thinking is near chance; full effort is right


@pytest.mark.slow
def test_effort_spends_about_its_share_of_the_base(by_effort):
    """Each response reports the spend, the option chosen and the realised fraction of the base's
    predicted full length; reasoning stays within the thinking budget; the mean over the set is
    at most about effort x slack of the base's full length."""
    for e in (0.25, 0.5, 0.75, 1.0):
        rows = by_effort[MODEL, e]
        reps = [r.model_extra["effort"] for _, r in rows]
        for (_, r), rep in zip(rows, reps):
            n = reasoning_tokens(r)
            assert rep["applied"] == e and rep["choice"] and rep["spend"] >= 16, rep
            assert rep["realised_fraction"] == pytest.approx(n / rep["full_effort_tokens"], rel=0.01)
            assert rep["thinking_budget"] is None or n <= rep["thinking_budget"]
        spent = sum(reasoning_tokens(r) for _, r in rows)
        assert spent <= 1.25 * e * sum(rep["full_effort_tokens"] for rep in reps), (e, spent)


def test_named_levels_equal_their_numbers(client, prompts):
    for name, number in (("low", 0.25), ("medium", 0.5), ("high", 1.0), ("minimal", 0.1)):
        for p in prompts[:3]:
            a, b = ask(client, p.question, effort=name), ask(client, p.question, effort=number)
            ra, rb = a.model_extra["effort"], b.model_extra["effort"]
            assert ra["applied"] == number and ra["requested"] == name
            assert (ra["choice"], ra["thinking_budget"], a.choices[0].message.content) == (
                rb["choice"],
                rb["thinking_budget"],
                b.choices[0].message.content,
            )


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


def test_usage_matches_returned_texts(client, prompts, tokenizer):
    for p in prompts[:5]:
        r = ask(client, p.question, effort="medium", adapters="none")
        m = r.choices[0].message
        n_reason = len(tokenizer.encode(m.reasoning, add_special_tokens=False))
        n_answer = len(tokenizer.encode(m.content, add_special_tokens=False))
        assert reasoning_tokens(r) == n_reason
        assert m.model_extra["reasoning_content"] == m.reasoning
        # completion = <think> + reasoning + </think> + answer + end-of-sequence
        assert r.usage.completion_tokens == n_reason + n_answer + 3
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.question}], add_generation_prompt=True, tokenize=False
        )
        assert r.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
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
            chunks = list(
                ask(client, p.question, effort=effort, seed=1, stream=True, stream_options={"include_usage": True})
            )
            reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning") or "" for c in chunks if c.choices)
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert reasoning == full.choices[0].message.reasoning
            assert content == full.choices[0].message.content
            last = chunks[-1]
            assert last.usage.completion_tokens == full.usage.completion_tokens
            assert last.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens(full)
            assert last.model_extra["effort"]["thinking_budget"] == full.model_extra["effort"]["thinking_budget"]
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_n_choices_and_sampling(client, prompts, tokenizer):
    r = ask(client, prompts[0].question, n=3, temperature=1.0, seed=5)
    assert len(r.choices) == 3 and {c.index for c in r.choices} == {0, 1, 2}
    per_choice = [len(tokenizer.encode(c.message.reasoning or "", add_special_tokens=False)) for c in r.choices]
    assert reasoning_tokens(r) == sum(per_choice)  # usage sums over the choices
    again = ask(client, prompts[0].question, n=3, temperature=1.0, seed=5)
    assert [c.message.reasoning for c in again.choices] == [c.message.reasoning for c in r.choices]


def test_completions_endpoint(client, prompts, tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[0].question}], add_generation_prompt=True, tokenize=False
    )
    r = client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=200, extra_body={"thinking_token_budget": 4}
    )
    assert r.usage.completion_tokens_details.reasoning_tokens <= 4
    assert "\\boxed{" in r.choices[0].text and r.model_extra["effort"]["thinking_budget"] == 4
    stream = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            temperature=0,
            max_tokens=200,
            stream=True,
            extra_body={"thinking_token_budget": 4},
        )
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text


def _chat_logprobs_check(r, k):
    ch = r.choices[0]
    content, reasoning = ch.logprobs.content, ch.logprobs.model_extra["reasoning"]
    assert "".join(t.token for t in content) == ch.message.content
    assert "".join(t["token"] for t in reasoning) == ch.message.reasoning
    assert len(reasoning) == reasoning_tokens(r)  # the markers are in neither list
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == k
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the most likely
    return [t.logprob for t in content], [t["logprob"] for t in reasoning]


def test_chat_logprobs_split_like_the_texts(client, prompts):
    p = prompts[2]
    r = ask(client, p.question, logprobs=True, top_logprobs=3, max_tokens=200)
    full = _chat_logprobs_check(r, 3)
    chunks = list(ask(client, p.question, logprobs=True, top_logprobs=3, max_tokens=200, stream=True))
    content = [t.logprob for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    reasoning = [
        t["logprob"]
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.model_extra.get("reasoning") or []
    ]
    assert (content, reasoning) == full
    assert ask(client, p.question).choices[0].logprobs is None  # only when asked for
    budget = ask(client, p.question, logprobs=True, thinking_token_budget=4)
    assert len(budget.choices[0].logprobs.model_extra["reasoning"]) == reasoning_tokens(budget) <= 4


def test_completion_logprobs(client, prompts, tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[3].question}], add_generation_prompt=True, tokenize=False
    )
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=200, logprobs=2)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    assert "".join(lp.tokens) == text and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert [text[o : o + len(t)] for o, t in zip(lp.text_offset, lp.tokens)] == lp.tokens
    assert all(len(top) == 2 and max(top, key=top.get) == t for top, t in zip(lp.top_logprobs, lp.tokens))
    stream = list(
        client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=200, logprobs=2, stream=True)
    )
    pieces = [c.choices[0].logprobs for c in stream if c.choices and c.choices[0].logprobs]
    assert [t for x in pieces for t in x.tokens] == lp.tokens
    assert [o for x in pieces for o in x.text_offset] == lp.text_offset


def _rechecked(prompts, k: int = 0) -> str:
    """The k-th question longer than the terse style's reach: the base's greedy answer to it
    re-checks (on shorter ones it may write the terse chain and stop)."""
    return [p.question for p in prompts if p.difficulty > TERSE_MAX][k]


def test_sampling_fields_are_honoured(client, prompts, tokenizer):
    check = tokenizer.encode(" check", add_special_tokens=False)
    assert len(check) == 1
    q = _rechecked(prompts)
    plain = ask(client, q, adapters="none")
    assert " check" in plain.choices[0].message.reasoning
    banned = ask(
        client, q, adapters="none", logit_bias={str(check[0]): -100}
    )  # the base's re-check pass can no longer start
    assert " check" not in banned.choices[0].message.reasoning and reasoning_tokens(banned) < reasoning_tokens(plain)
    penalised = ask(client, q, adapters="none", presence_penalty=2.0, frequency_penalty=2.0)
    assert penalised.choices[0].message.reasoning != plain.choices[0].message.reasoning
    top1 = ask(
        client, q, adapters="none", temperature=1.0, seed=3, extra_body={"top_k": 1}
    )  # top_k 1 at temperature 1 is greedy
    assert top1.choices[0].message.reasoning == plain.choices[0].message.reasoning
    wide = ask(
        client, q, adapters="none", extra_body={"top_k": 10**20}
    )  # more than the vocabulary: no top-k (not an error)
    assert wide.choices[0].message.reasoning == plain.choices[0].message.reasoning
    long = ask(client, q, adapters="none", reasoning_effort="none", max_tokens=40, extra_body={"min_tokens": 30})
    assert long.usage.completion_tokens >= 30


def test_structured_answer_leaves_thinking_free(client, prompts):
    """The constraint applies to the answer only: the reasoning is the unconstrained one."""
    import re

    q = prompts[5].question
    free = ask(client, q)
    choice = ask(client, q, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert choice.choices[0].message.content in ("yes", "no")
    assert choice.choices[0].message.reasoning == free.choices[0].message.reasoning
    digits = ask(client, q, extra_body={"structured_outputs": {"regex": "[0-9]{3}"}})
    assert re.fullmatch(r"[0-9]{3}", digits.choices[0].message.content)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    js = ask(
        client,
        q,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert js.choices[0].message.content.startswith("{")  # the tiny model knows no JSON; the grammar still holds
    no_tools = ask(client, q, tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none")
    assert no_tools.choices[0].message.reasoning == free.choices[0].message.reasoning  # tools declined: plain chat
    cut = ask(client, q, thinking_token_budget=3, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert reasoning_tokens(cut) <= 3 and cut.choices[0].message.content in ("yes", "no")
    chunks = list(ask(client, q, stream=True, extra_body={"structured_outputs": {"choice": ["yes", "no"]}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.choices[0].message.content


def test_stop_strings_apply_to_the_answer(client, prompts, tokenizer):
    """A stop string in the thinking does not cost the answer; in the answer it ends the choice
    there (and the engine request: fewer tokens), streamed or not; usage counts the tokens up to
    the one that completes the stop string, however far the engine ran ahead of the stream."""
    q = _rechecked(prompts, 1)
    free = ask(client, q, adapters="none")
    assert " check" in free.choices[0].message.reasoning and free.choices[0].message.content.startswith("\\boxed{")
    kept = ask(client, q, adapters="none", stop=[" check"])
    assert (kept.choices[0].message.reasoning, kept.choices[0].message.content) == (
        free.choices[0].message.reasoning,
        free.choices[0].message.content,
    )
    cut = ask(client, q, adapters="none", stop=["{", "never"])
    assert cut.choices[0].message.content == "\\boxed" and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens
    chunks = list(ask(client, q, adapters="none", stop="{", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "\\boxed"
    # <think> + reasoning + </think> + the answer's tokens through the stop string's "{"
    want = reasoning_tokens(cut) + 2 + len(tokenizer.encode("\\boxed{", add_special_tokens=False))
    assert cut.usage.completion_tokens == want
    assert chunks[-1].usage.completion_tokens == want


DOCUMENTED = [
    "effort_requests_total",
    "effort_e2e_request_latency_seconds",
    "effort_time_to_first_token_seconds",
    "effort_time_per_output_token_seconds",
    "effort_prompt_tokens",
    "effort_reasoning_tokens",
    "effort_answer_tokens",
    "effort_thinking_budget_tokens",
    "effort_budget_hits_total",
    "effort_tokens_saved_total",
    "effort_request_errors_total",
    "effort_spend_tokens",
    "effort_realised_fraction",
    "effort_route_choices_total",
]


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


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"effort": 1.5}, 400, "effort"),
        ({"effort": "turbo"}, 400, "effort"),
        ({"effort": "auto", "model": "noisy"}, 400, "effort"),
        ({"reasoning_effort": "turbo"}, 400, "reasoning_effort"),
        ({"reasoning": {"effort": "turbo"}}, 400, "reasoning.effort"),
        ({"reasoning": "high"}, 400, "reasoning"),
        ({"reasoning": {"max_tokens": -1}}, 400, "reasoning.max_tokens"),
        ({"reasoning": {"enabled": "yes"}}, 400, "reasoning.enabled"),
        ({"reasoning": {"enabled": False}, "effort": 0.5}, 400, "reasoning.enabled"),
        ({"include_reasoning": "no"}, 400, "include_reasoning"),
        ({"chat_template_kwargs": 5}, 400, "chat_template_kwargs"),
        ({"chat_template_kwargs": {"tokenize": True}}, 400, "chat_template_kwargs.tokenize"),
        ({"chat_template_kwargs": {"enable_thinking": "no"}}, 400, "chat_template_kwargs.enable_thinking"),
        (
            {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "high"},
            400,
            "chat_template_kwargs.enable_thinking",
        ),
        ({"adapters": "some"}, 400, "adapters"),
        ({"adapters": "none", "model": "noisy"}, 400, "adapters"),
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
        ({"presence_penalty": 2.5}, 400, "presence_penalty"),
        ({"logit_bias": {"x": 1}}, 400, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, 400, "logit_bias"),
        ({"logit_bias": {"5": 300}}, 400, "logit_bias"),
        ({"top_logprobs": 2}, 400, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        ({"repetition_penalty": 0}, 400, "repetition_penalty"),
        ({"min_tokens": 50, "max_tokens": 10}, 400, "min_tokens"),
        ({"seed": 10**20}, 400, "seed"),
        ({"structured_outputs": {"regex": "[0-9"}}, 400, "structured_outputs"),
        ({"response_format": {"type": "json_schema"}}, 400, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
            400,
            "response_format",
        ),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}},
            400,
            "structured_outputs",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"structured_outputs": {"json": {"type": "object", "maxProperties": 10**30}}}, 400, "structured_outputs"),
    ],
    ids=[
        "effort-1.5",
        "effort-turbo",
        "auto-no-route",
        "reasoning-effort-bad",
        "openrouter-effort-bad",
        "openrouter-not-object",
        "openrouter-negative-budget",
        "openrouter-enabled-type",
        "openrouter-conflict",
        "include-reasoning-type",
        "template-kwargs-type",
        "template-kwargs-reserved",
        "enable-thinking-type",
        "enable-thinking-conflict",
        "adapters-value",
        "adapters-conflict",
        "negative-budget",
        "unknown-model",
        "path-model",
        "null-messages",
        "empty-messages",
        "prompt-too-long",
        "max-tokens-over-context",
        "n-zero",
        "negative-temperature",
        "n-greedy",
        "presence-penalty-range",
        "logit-bias-key",
        "logit-bias-vocab",
        "logit-bias-value",
        "top-logprobs-alone",
        "top-logprobs-range",
        "repetition-penalty-zero",
        "min-tokens-over-max",
        "seed-over-64-bit",
        "bad-regex",
        "json-schema-missing",
        "json-schema-invalid",
        "two-constraints",
        "tools",
        "schema-int-over-64-bit",
    ],
)
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
