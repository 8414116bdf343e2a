"""Real model families through `effort serve`: tiny Qwen3 and DeepSeek-R1-distill models (real
tokenizers and architectures, see tests/families.py), served with no manifest of ours."""

from __future__ import annotations

import shutil
import subprocess
import sys

import families
import pytest
from openai import OpenAI
from procs import REPO, free_port, start, stop

from effort_server.contract.markers import Markers, detect_markers, open_thinking
from effort_server.contract.prompt import chat_ids

pytestmark = pytest.mark.slow
MSG = [{"role": "user", "content": "two three five"}]


@pytest.fixture(scope="module", params=families.FAMILIES)
def family(request, tmp_path_factory):
    """(name, model folder, client) of a served tiny model of the family."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    folder = families.build(name, root / name)
    port = free_port()
    cmd = [sys.executable, "-m", "effort_server.cli", "serve", "--model", str(folder), "--port", str(port)]
    proc = start(cmd, root / "serve.log", f"http://127.0.0.1:{port}")
    yield name, folder, OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
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
