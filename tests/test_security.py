"""Access and limits on a live server started with an API key and small limits; graceful
shutdown on SIGTERM. Table-driven: every limit, auth (missing / wrong / right key; open and
protected health and metrics), adapter-name injection."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from effort_server.server.limits import Admission, KeyCheck, Overloaded, Unauthorized, load_keys
from procs import free_port, start, stop

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test-0123456789"
HARD = "a1 b2 c3 d4 e5 f6 g7 h8 i9 j0 k1 l2 m3 n4 o5 p6"  # 16 digits: the longest thinking
LIMITS = dict(
    max_body_bytes=4096,
    max_prompt_tokens=200,
    max_n=8,
    max_output_tokens=300,
    max_concurrent=2,
    max_queue=2,
    request_timeout=1.0,
)


def start_secured(model_dir, log_path, **extra):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "effort_server.cli",
        "serve",
        "--port",
        str(port),
        "--model",
        str(model_dir),
        "--adapters",
        str(REPO / "adapters"),
        "--api-key",
        f"other-key,{KEY}",
        "--protect-metrics",
        "--log-level",
        "warning",
    ]
    for k, v in {**LIMITS, **extra}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    url = f"http://127.0.0.1:{port}"
    return start(args, log_path, url, timeout=180), url


@pytest.fixture(scope="module")
def secured(model_dir, tmp_path_factory):
    proc, url = start_secured(model_dir, tmp_path_factory.mktemp("logs") / "secured.log")
    yield url
    stop(proc, 60)


AUTH = {"authorization": f"Bearer {KEY}"}


def chat(url, headers=AUTH, **body):
    payload = {
        "model": "effort-tiny",
        "messages": [{"role": "user", "content": "a1 b2 c3"}],
        "temperature": 0,
        "max_tokens": 40,
        **body,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=60)


def _is_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


# -- unit: keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header,ok",
    [
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Basic abc", False),
        ("Bearer wrong", False),
        (f"Bearer {KEY}x", False),
        (f"Bearer {KEY[:-1]}", False),
        (f"Bearer {KEY}", True),
        (f"bearer {KEY}", True),
        ("Bearer k2", True),
    ],
)
def test_key_check(header, ok):
    kc = KeyCheck([KEY.encode(), b"k2"])
    if ok:
        kc.check(header)
    else:
        with pytest.raises(Unauthorized):
            kc.check(header)


def test_keys_from_flag_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# team keys\nkey-a\n\n  key-b  \n")
    monkeypatch.setenv("EFFORT_API_KEYS", "env-1, env-2")
    assert load_keys("x,y", "") == [b"x", b"y"]
    assert load_keys("x", str(f)) == [b"x", b"key-a", b"key-b"]
    assert load_keys("", "") == [b"env-1", b"env-2"]  # the environment only when nothing else is set
    monkeypatch.delenv("EFFORT_API_KEYS")
    assert load_keys("", "") == [] and not KeyCheck([]).enabled
    with pytest.raises(ValueError, match="not found"):
        load_keys("", str(tmp_path / "missing"))


def test_admission_queue_and_refusal():
    async def main():
        adm = Admission(max_concurrent=1, max_queue=1)
        t1 = await adm.enter()
        waiter = asyncio.ensure_future(adm.enter())  # queued
        await asyncio.sleep(0.01)
        assert adm.running == 1 and adm.queued == 1 and not waiter.done()
        with pytest.raises(Overloaded) as e:
            await adm.enter()
        assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
        adm.release(t1)
        t2 = await asyncio.wait_for(waiter, 1)
        assert adm.running == 1 and adm.queued == 0
        adm.release(t2)
        assert adm.running == 0

    asyncio.run(main())


# -- live: auth ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,method,headers,status",
    [
        ("/v1/models", "get", {}, 401),
        ("/v1/models", "get", {"authorization": "Bearer nope"}, 401),
        ("/v1/models", "get", {"authorization": KEY}, 401),  # no scheme
        ("/v1/models", "get", AUTH, 200),
        ("/v1/models", "get", {"authorization": "Bearer other-key"}, 200),
        ("/v1/chat/completions", "post", {}, 401),
        ("/v1/completions", "post", {"authorization": "Bearer nope"}, 401),
        ("/health", "get", {}, 200),  # open by default
        ("/metrics", "get", {}, 401),  # protected by --protect-metrics
        ("/metrics", "get", AUTH, 200),
    ],
)
def test_auth(secured, path, method, headers, status):
    body = {"model": "effort-tiny", "prompt": "a1", "messages": [{"role": "user", "content": "a1"}], "max_tokens": 5}
    r = getattr(httpx, method)(
        f"{secured}{path}", headers=headers, timeout=60, **({"json": body} if method == "post" else {})
    )
    assert r.status_code == status, r.text
    if status == 401:
        _is_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"


# -- live: limits --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,status,code,param",
    [
        ({"n": 9}, 400, "limit_exceeded", "n"),
        ({"max_tokens": 301}, 400, "limit_exceeded", "max_tokens"),
        ({"max_completion_tokens": 301, "max_tokens": None}, 400, "limit_exceeded", "max_tokens"),
        ({"messages": [{"role": "user", "content": "a1 " * 300}]}, 400, "context_length_exceeded", "messages"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "request_too_large", None),
        ({"model": "../adapters/dler"}, 404, "model_not_found", "model"),
        ({"model": "/work/main/adapters/dler"}, 404, "model_not_found", "model"),
        ({"model": "%2e%2e%2fdler"}, 404, "model_not_found", "model"),
        ({"model": "dler/../e1"}, 404, "model_not_found", "model"),
    ],
    ids=[
        "n",
        "max-tokens",
        "max-completion-tokens",
        "prompt-tokens",
        "body-size",
        "dotdot",
        "absolute",
        "urlencoded",
        "nested",
    ],
)
def test_limits_and_injection(secured, body, status, code, param):
    r = chat(secured, **{k: v for k, v in body.items()})
    err = _is_error(r, status, code)
    assert err["param"] == param


def test_chunked_body_over_limit_is_413(secured):
    def gen():
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(
        f"{secured}/v1/chat/completions",
        content=gen(),
        headers={**AUTH, "content-type": "application/json"},
        timeout=30,
    )
    _is_error(r, 413, "request_too_large")


def test_within_limits_works(secured):
    r = chat(secured, n=2, max_tokens=60, temperature=1.0)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_overload_gives_429_with_retry_after_then_recovers(secured):
    """2 running + 2 queued allowed: 8 concurrent long requests → some 429 (with Retry-After),
    the rest served; afterwards the slots are free again."""

    async def main():
        async with httpx.AsyncClient(timeout=60) as c:
            body = {
                "model": "effort-tiny",
                "messages": [{"role": "user", "content": HARD}],
                "max_tokens": 120,
                "temperature": 0,
            }
            return await asyncio.gather(
                *(c.post(f"{secured}/v1/chat/completions", json=body, headers=AUTH) for _ in range(8))
            )

    rs = asyncio.run(main())
    codes = sorted(r.status_code for r in rs)
    # exactly 2 running + 2 queued admitted (each then answered, or cut by the 1 s limit)
    assert codes.count(429) == 4 and set(codes) <= {200, 429, 504}, codes
    for r in rs:
        if r.status_code == 429:
            _is_error(r, 429, "server_overloaded")
            assert int(r.headers["retry-after"]) >= 1
    assert chat(secured).status_code == 200
    assert chat(secured, headers={}).status_code == 401
    m = httpx.get(f"{secured}/metrics", headers=AUTH).text
    assert 'effort_rejections_total{reason="overloaded"}' in m and 'effort_rejections_total{reason="auth"}' in m


def test_timeout_gives_504_and_frees_the_engine(secured):
    """The limit counts from arrival, queue included: behind two long requests holding both
    slots, a third cannot finish within 1 s → 504 (the long ones may hit it too); their engine
    requests are aborted, so the next request is answered at once."""

    async def main():
        long_ = {
            "model": "effort-tiny",
            "messages": [{"role": "user", "content": HARD}],
            "max_tokens": 300,
            "temperature": 1.0,
            "n": 8,
        }
        async with httpx.AsyncClient(timeout=60) as c:
            first = [
                asyncio.ensure_future(c.post(f"{secured}/v1/chat/completions", json=long_, headers=AUTH))
                for _ in range(2)
            ]
            await asyncio.sleep(0.2)
            third = await c.post(f"{secured}/v1/chat/completions", json=long_, headers=AUTH)
            return third, [await f for f in first]

    third, first = asyncio.run(main())
    _is_error(third, 504, "request_timeout")
    assert {r.status_code for r in first} <= {200, 504}
    t = time.time()
    assert chat(secured).status_code == 200 and time.time() - t < 1.0
    m = httpx.get(f"{secured}/metrics", headers=AUTH).text
    assert 'effort_rejections_total{reason="timeout"}' in m


@pytest.mark.slow
def test_sigterm_drains_in_flight_then_exits_0(model_dir, tmp_path):
    """SIGTERM while a stream is in flight: the listener closes at once (new connections
    refused), the stream runs to its end, the process exits 0."""
    proc, url = start_secured(model_dir, tmp_path / "drain.log", request_timeout=60, drain_timeout=30)
    try:
        body = {
            "model": "effort-tiny",
            "messages": [{"role": "user", "content": HARD}],
            "max_tokens": 250,
            "temperature": 1.0,
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 4,
        }
        lines = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
            it = r.iter_lines()
            lines.append(next(it))
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", timeout=2)
            lines += list(it)
        lines = [x for x in lines if x]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert any('"usage"' in x for x in lines)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_fuzz_with_schemathesis_finds_no_5xx_and_no_schema_violation(model_dir, tmp_path):
    """≥ 1,000 requests generated from the server's own OpenAPI schema (coverage + fuzzing
    phases; every check except `positive_data_acceptance`, since cross-field rules such as
    n > 1 needing sampling, or a prompt that overflows the context, are not expressible in the
    schema). Short outputs keep it bounded."""
    proc, url = start_secured(
        model_dir,
        tmp_path / "fuzz.log",
        max_output_tokens=16,
        max_n=2,
        request_timeout=60,
        max_body_bytes=1 << 20,
        max_prompt_tokens=0,
        max_concurrent=64,
        max_queue=256,
    )
    try:
        r = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{url}/openapi.json",
                "-H",
                f"Authorization: Bearer {KEY}",
                "-n",
                "330",
                "--seed",
                "1",
                "--exclude-checks",
                "positive_data_acceptance",
                "--request-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = r.stdout + r.stderr
        import re

        m = re.search(r"(\d+) generated, (\d+) passed", out)
        assert r.returncode == 0 and m, out[-4000:]
        assert int(m.group(1)) >= 1000 and m.group(1) == m.group(2), m.group(0)
    finally:
        stop(proc, 60)
