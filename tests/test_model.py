"""The embedded model loads in transformers, peft and vLLM, with identical token ids."""

import random

import pytest
import torch
from effort_server.training.base_model import render_completion, render_prompt
from effort_server.training.tasks import DigitsTask


def _texts(n=300):
    t, rng = DigitsTask(), random.Random(7)
    return [render_prompt(q) + render_completion(th, a) for q, th, a in (t.sft_example(rng) for _ in range(n))]


def test_tokenizer_ids_match_everywhere(model_dir, evaluator):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # what training used
    auto = AutoTokenizer.from_pretrained(model_dir)
    vllm_tok = evaluator.tokenizer
    for text in _texts():
        ids = raw.encode(text, add_special_tokens=False).ids
        assert auto.encode(text, add_special_tokens=False) == ids
        assert vllm_tok.encode(text, add_special_tokens=False) == ids
        assert auto.decode(ids) == text


def test_think_markers_are_single_tokens(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for marker in ("<think>", "</think>"):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    chat = tok.apply_chat_template([{"role": "user", "content": "a1 b2"}], tokenize=False, add_generation_prompt=True)
    assert chat == render_prompt("a1 b2")


def test_head_size_fits_vllm_cpu(model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads >= 32
    assert (model_dir / "model.safetensors").stat().st_size < 20e6


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _greedy(model, tok, question, max_new=200):
    ids = tok(render_prompt(question), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id)
    return out[0, ids.shape[1] :].tolist()


def _easy(task, n, seed):
    return [p for p in task.problems("test", 6 * n, seed=seed) if p.difficulty <= 6][:n]


def test_transformers_greedy_thinks_then_answers(hf, task):
    model, tok = hf
    probs = _easy(task, 8, seed=3)
    correct = 0
    for p in probs:
        ids = _greedy(model, tok, p.question)
        text = tok.decode(ids)
        assert text.startswith("<think>"), text
        assert "</think>" in text
        correct += task.grade(text.split("</think>")[-1], p)
    assert correct >= 7


def test_vllm_matches_transformers_greedy(hf, evaluator, task):
    model, tok = hf
    # easy prompts: the model is confident there; on long prompts its digit copies are near-ties
    # that fp32 rounding differences between the two implementations can flip
    probs = _easy(task, 8, seed=4)
    rows = evaluator.generate(probs, task, None, [None] * len(probs))
    same = 0
    for p, row in zip(probs, rows):
        hf_text = tok.decode(_greedy(model, tok, p.question), skip_special_tokens=True)
        same += hf_text.startswith("<think>" + row["reasoning"] + "</think>")
    assert same == len(probs)


def test_peft_lora_attaches_and_changes_output(hf):
    from peft import LoraConfig, get_peft_model

    model, tok = hf
    import copy

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    ids = tok(render_prompt("a1 b2 c3"), return_tensors="pt").input_ids
    with torch.no_grad():
        base = model(ids).logits
        same = peft_model(ids).logits
        assert torch.allclose(base, same, atol=1e-5)  # LoRA B starts at zero
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        assert not torch.allclose(base, peft_model(ids).logits, atol=1e-3)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad) > 0


def test_continued_training_stage_keeps_the_tokenizer_and_records_its_mix(model_dir, tmp_path):
    """`effort train base --init-from`: a second supervised stage on another style mix; the
    tokenizer files are copied verbatim and each stage's mix is in the manifest."""
    import json

    from effort_server.training.base_model import BaseModelConfig, train_base

    out = tmp_path / "tiny2"
    cfg = BaseModelConfig(
        out=str(out),
        init_from=str(model_dir),
        tokens=2e4,
        minutes=2,
        threads=1,
        styles="verbose=0.5,partial=0.5",
        recheck_passes=2,
        curriculum_start=16,
        curriculum_until=0,
    )
    train_base(cfg, log=lambda *_: None)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (model_dir / f).read_bytes()
    stages = json.loads((out / "manifest.json").read_text())["training"]["stages"]
    assert len(stages) >= 2 and stages[-1]["init_from"] is True
    assert stages[-1]["style_mix"] == {"verbose": 0.5, "partial": 0.5} and stages[-1]["recheck_passes"] == 2
    assert stages[-1]["tokens"] >= 2e4
    assert not list(tmp_path.glob("*.tmp"))
