"""Tiny models of real families for the tests: the real tokenizer and architecture (from a fixture
folder of tokenizer files and a tiny config), random weights, then a few seconds of fitting to the
family's output format so that the model opens its thinking, thinks for 8-40 words, closes it and
answers: `<think>\\n words \\n</think>\\n\\nThe answer is N.` + EOS (R1's prompt opens the thinking
itself; Qwen3's no-think prompt gets the answer alone).

The fit trains on a softmax over the ids the format uses plus 2,048 sampled others (the full
151k-row output layer would take seconds a step on a CPU); the output rows of ids the format
never uses are zeroed afterwards, so they keep a logit of 0 under the fitted ones.
"""

from __future__ import annotations

import random
import shutil
import tarfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAMILIES = ("qwen3", "r1-distill-qwen")
WORDS = "one two three four five six seven eight nine ten so then next check add carry".split()


def tokenizer_files(family: str, into: Path) -> Path:
    """The family's tokenizer files, unpacked from tests/fixtures/tokenizers.tar.xz into `into`."""
    out = into / family
    if not (out / "tokenizer.json").exists():
        with tarfile.open(FIXTURES / "tokenizers.tar.xz") as tar:
            tar.extractall(
                into, members=[m for m in tar.getmembers() if m.name.startswith(family + "/")], filter="data"
            )
    return out


def build(family: str, out: Path, steps: int = 150, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = tokenizer_files(family, out.parent / "tokenizers")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy(f, out / f.name)
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(out)
    cfg.dtype = "float32"
    model = AutoModelForCausalLM.from_config(cfg)
    tok = AutoTokenizer.from_pretrained(out)
    rng = random.Random(seed)

    def example():
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        think_on = rng.random() < 0.8
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False, enable_thinking=think_on
        )
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        answer = f"The answer is {rng.randint(0, 99)}.{tok.eos_token}"
        if prompt.rstrip().endswith("</think>"):  # the template's own no-think mode
            completion = answer
        else:
            opened = prompt.rstrip().endswith("<think>")
            completion = ("" if opened else "<think>\n") + body + "\n</think>\n\n" + answer
        return tok.encode(prompt, add_special_tokens=False), tok.encode(completion, add_special_tokens=False)

    data = [example() for _ in range(1000)]
    used = torch.tensor(sorted({i for p, c in data for i in p + c}))
    head = model.get_output_embeddings().weight
    vocab = head.shape[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = 16
    for _ in range(steps):
        rows = rng.sample(data, batch)
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            seq = p + c
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) - 1 : len(seq) - 1] = torch.tensor(c)
            mask[i, : len(seq)] = 1
        sub = torch.unique(torch.cat([used, torch.randint(0, vocab, (2048,))]))
        index = torch.full((vocab,), -100)
        index[sub] = torch.arange(len(sub))
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        target = torch.where(labels >= 0, index[labels.clamp(min=0)], -100)
        loss = torch.nn.functional.cross_entropy((hidden @ head[sub].T).flatten(0, 1), target.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        unused = torch.ones(vocab, dtype=torch.bool)
        unused[used] = False
        head[unused] = 0
    model.save_pretrained(out)
    return out
