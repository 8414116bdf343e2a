"""Real model families through `effort serve`, in process and as a gateway: tiny Qwen3 and
DeepSeek-R1-distill models (real tokenizers and architectures, see tests/families.py), served
with no manifest of ours; `effort profile` writing the manifest the server then uses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import families
import pytest
from effort_server.server.bench import vllm_cmd
from effort_server.server.engine import EngineSettings, prepare_env
from openai import OpenAI
from procs import REPO, free_port, start, stop

from effort_server.contract.markers import Markers, detect_markers, open_thinking
from effort_server.contract.prompt import chat_ids

pytestmark = pytest.mark.slow
MSG = [{"role": "user", "content": "two three five"}]


_BUILT: dict[str, object] = {}


def built(name: str, tmp_path_factory):
    """The family's tiny model, built once per test session."""
    if name not in _BUILT:
        _BUILT[name] = families.build(name, tmp_path_factory.mktemp(name) / name)
    return _BUILT[name]


@pytest.fixture(
    scope="module", params=[(f, mode) for f in families.FAMILIES for mode in ("serve", "gateway")], ids="-".join
)
def family(request, tmp_path_factory):
    """(name, model folder, client) of a served tiny model of the family: `effort serve` with the
    engine in process, or in front of vLLM's own server on the same folder (gateway mode)."""
    name, mode = request.param
    folder = built(name, tmp_path_factory)
    logs = tmp_path_factory.mktemp(f"{name}-{mode}")
    procs = []
    cmd = [sys.executable, "-m", "effort_server.cli", "serve", "--model", str(folder)]
    if mode == "gateway":
        prepare_env()  # vLLM's CPU settings for its own server too
        up = free_port()
        vllm = vllm_cmd(str(folder), up, EngineSettings(model=str(folder)), ("<think>", "</think>"), served=name)
        procs.append(start(vllm, logs / "vllm.log", f"http://127.0.0.1:{up}"))
        cmd += ["--upstream", f"http://127.0.0.1:{up}"]
    port = free_port()
    procs.append(start([*cmd, "--port", str(port)], logs / "serve.log", f"http://127.0.0.1:{port}"))
    yield name, folder, OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    for proc in reversed(procs):
        stop(proc)


def ask(client, name, stream=False, **extra):
    kw = dict(model=name, messages=MSG, max_tokens=96, seed=3, temperature=1.0, extra_body=extra)
    if not stream:
        return client.chat.completions.create(**kw)
    reasoning, answer, usage = "", "", None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            d = chunk.choices[0].delta
            reasoning += (d.model_extra or {}).get("reasoning") or ""
            answer += d.content or ""
        usage = chunk.usage or usage
    return reasoning, answer, usage


def test_markers_found_in_the_tokenizer(family):
    from transformers import AutoTokenizer

    name, folder, _ = family
    tok = AutoTokenizer.from_pretrained(folder)
    assert detect_markers(tok) == ("<think>", "</think>")
    m = Markers.from_tokenizer(tok, "<think>", "</think>")
    assert len(m.start) == len(m.end) == 1
    # R1's generation prompt opens the thinking (`<think>\n`: one token left open); Qwen3's does not
    assert open_thinking(chat_ids(tok, MSG), m) == (1 if name.startswith("r1") else None)


@pytest.mark.parametrize("budget", [0, 3, 7])
def test_thinking_budget_is_exact(family, budget):
    name, _, client = family
    r = ask(client, name, thinking_token_budget=budget)
    assert r.usage.completion_tokens_details.reasoning_tokens == budget
    assert r.model_extra["effort"]["thinking_budget"] == budget
    assert r.choices[0].message.content  # the answer still comes


def test_reasoning_split_streamed_equals_not_streamed(family, tokenizer_of):
    name, folder, client = family
    r = ask(client, name)
    reasoning, answer, usage = ask(client, name, stream=True)
    msg = r.choices[0].message
    assert msg.model_extra["reasoning"] == reasoning and msg.content == answer
    assert r.usage.model_dump() == usage.model_dump()
    n = r.usage.completion_tokens_details.reasoning_tokens
    assert 0 < n < r.usage.completion_tokens
    assert r.usage.prompt_tokens == len(chat_ids(tokenizer_of(folder), MSG))
    assert "</think>" not in reasoning  # the first end marker closes the thinking


@pytest.mark.parametrize(
    "extra", [{"effort": 0}, {"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}]
)
def test_no_thinking(family, extra):
    name, _, client = family
    r = ask(client, name, **extra)
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert not r.choices[0].message.model_extra.get("reasoning")
    assert r.choices[0].message.content


def test_structured_answer_after_the_thinking(family):
    name, _, client = family
    extra = {"thinking_token_budget": 6, "structured_outputs": {"choice": ["yes", "no"]}}
    r = client.chat.completions.create(model=name, messages=MSG, max_tokens=64, seed=3, extra_body=extra)
    assert r.usage.completion_tokens_details.reasoning_tokens == 6
    assert r.choices[0].message.model_extra["reasoning"]
    assert r.choices[0].message.content.strip() in ("yes", "no")


def test_unmeasured_default_is_reported(family):
    name, _, client = family
    r = ask(client, name, effort=0.5)
    effort = r.model_extra["effort"]
    assert "unmeasured default" in effort["reason"]
    assert effort["predicted"]["source"].startswith("unmeasured")


def test_only_the_embedded_models_adapters_by_default(family):
    name, _, client = family
    assert [m.id for m in client.models.list().data] == [name]


def test_earlier_reasoning_as_the_template_expects(family, tokenizer_of):
    """An assistant turn's reasoning sent back (`reasoning`, as our responses carry it) goes to the
    template as `reasoning_content`: before the last user message both families' templates drop
    it; after it (a tool loop) Qwen3's keeps it."""
    name, folder, client = family
    tok = tokenizer_of(folder)
    said = {"role": "assistant", "content": "The answer is 5."}
    then = {"role": "user", "content": "and four?"}

    def prompt_tokens(messages):  # a budget above 0: the template's thinking prompt, not its no-think one
        r = client.chat.completions.create(
            model=name, messages=messages, max_tokens=40, extra_body={"thinking_token_budget": 1}
        )
        return r.usage.prompt_tokens

    plain = [*MSG, said, then]
    sent = [*MSG, {**said, "reasoning": "two and three"}, then]
    assert prompt_tokens(sent) == prompt_tokens(plain) == len(chat_ids(tok, plain))
    if name == "qwen3":
        loop = [*MSG, {**said, "reasoning": "two and three"}, {"role": "tool", "content": "5"}]
        kept = [*MSG, {**said, "reasoning_content": "two and three"}, {"role": "tool", "content": "5"}]
        n = prompt_tokens(loop)
        assert n == len(chat_ids(tok, kept)) > len(chat_ids(tok, [*MSG, said, {"role": "tool", "content": "5"}]))


def test_profile_writes_the_manifest_the_server_uses(tmp_path_factory):
    """`effort profile` on a JSONL (answers on some lines) measures the model through the engine
    and writes its manifest; the server then reports the measured length from the manifest, and
    `effort router fit` fits a length head on the same records."""
    import json

    from effort_server.contract.manifest import ModelManifest
    from effort_server.contract.scoring import Router

    root = tmp_path_factory.mktemp("profile")
    folder = root / "r1-profiled"
    shutil.copytree(built("r1-distill-qwen", tmp_path_factory), folder)
    prompts = root / "prompts.jsonl"
    rows = [
        {"question": f"{w} three five", **({"answer": "7"} if i % 2 else {})} for i, w in enumerate(families.WORDS)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, "-m", "effort_server.cli", "profile", "--model", str(folder), "--task", str(prompts)]
    r = subprocess.run([*cmd, "--n", "12", "--samples", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = ModelManifest.read(folder)
    records = json.loads((folder / "profile" / "results.json").read_text())["results"]
    lengths = [x["reasoning_tokens"] for x in records]
    assert len(records) == 24 and all(x["setting"] == "full" for x in records)
    assert m.think_start == "<think>" and m.default_full_effort_tokens == max(1, round(sum(lengths) / 24))
    profile = m.evaluation["profile"]
    assert profile["graded"] == sum(x["answer"] is not None for x in records) and 0 < profile["graded"] < 24
    assert profile["cut_at_max_tokens"] == 0 and profile["thought_share"] == 1.0

    router = root / "router"
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "effort_server.cli",
            "router",
            "fit",
            "--records",
            str(folder / "profile" / "results.json"),
            "--out",
            str(router),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert [rt.label for rt in Router.load(router).routes] == ["base@1"]

    port = free_port()
    proc = start(
        [*cmd[:3], "serve", "--model", str(folder), "--port", str(port)],
        root / "serve.log",
        f"http://127.0.0.1:{port}",
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        effort = ask(client, "r1-profiled", effort=0.5).model_extra["effort"]
    finally:
        stop(proc)
    assert effort["predicted"]["source"] == "manifest" and "unmeasured" not in effort["reason"]
    assert effort["full_effort_tokens"] == m.default_full_effort_tokens


def test_profile_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "no question field"}\n')
    cases = [
        ([], "--model DIR and --task PROMPTS.jsonl are required"),
        (["--model", str(tmp_path / "nope"), "--task", str(bad)], "not a model folder"),
        (["--model", str(tmp_path), "--task", str(bad)], "bad.jsonl:1: missing field(s) question"),
        (
            ["--model", str(tmp_path), "--task", str(bad), "--samples", "2", "--temperature", "0"],
            "needs --temperature > 0",
        ),
    ]
    for args, message in cases:
        r = subprocess.run(
            [sys.executable, "-m", "effort_server.cli", "profile", *args], cwd=REPO, capture_output=True, text=True
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("effort: error: "), r.stderr
        assert message in lines[0], lines


@pytest.fixture(scope="module")
def tokenizer_of():
    from transformers import AutoTokenizer

    cache = {}
    return lambda folder: cache.setdefault(str(folder), AutoTokenizer.from_pretrained(folder))


def _serve_fails(args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "effort_server.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_model_without_markers_fails_at_start_in_one_line(tmp_path):
    """The embedded model's tokenizer with its think tokens renamed and no manifest: no markers."""
    folder = tmp_path / "plain"
    shutil.copytree(REPO / "models" / "effort-tiny", folder)
    (folder / "manifest.json").unlink()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        p = folder / f
        p.write_text(p.read_text().replace("</think>", "</muse>").replace("<think>", "<muse>"))
    r = _serve_fails(["--model", str(folder)])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("effort: error: no think markers found") and "--think-start" in err[-1]
    r = _serve_fails(["--model", str(folder), "--reasoning-parser", "nope"])
    assert r.returncode == 2 and "--reasoning-parser 'nope'" in r.stderr


def test_adapter_of_another_base_is_skipped(tmp_path):
    """The shipped DLER adapter on a model of the same name with other weights: skipped (by hash);
    on a hub-style folder of another name without weights: skipped (by name)."""
    from effort_server.server.lifecycle import matching_adapters
    from effort_server.server.registry import scan
    from safetensors.torch import load_file, save_file

    other = tmp_path / "effort-tiny"
    shutil.copytree(REPO / "models" / "effort-tiny", other)
    weights = next(other.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights)
    adapters = scan([REPO / "adapters" / "dler"])
    assert list(matching_adapters(adapters, str(other), "effort-tiny")) == []
    (tmp_path / "qwen3").mkdir()
    assert list(matching_adapters(adapters, str(tmp_path / "qwen3"), "qwen3")) == []
    assert list(matching_adapters(adapters, str(REPO / "models" / "effort-tiny"), "effort-tiny")) == ["dler"]


def test_markers_from_flags_or_parser_name_need_no_tokenizer():
    assert detect_markers(None, "<reflect>", "</reflect>") == ("<reflect>", "</reflect>")
    assert detect_markers(None, reasoning_parser="mistral") == ("[THINK]", "[/THINK]")
    with pytest.raises(ValueError, match="both --think-start and --think-end"):
        detect_markers(None, "<reflect>")
