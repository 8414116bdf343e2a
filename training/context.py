"""What a recipe reads and runs besides the trainer: the task, the problems, the tokenizer and
markers, prompt rendering (the contract's renderer), greedy / sampled rollouts of the current
model (HF generate) and supervised steps (e1's warm-up and anchor).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from effort_server.contract.prompt import render_chat

from .rollouts import Rollout, parse_rollout


@dataclass
class Context:
    """What recipes read: the task, problems by id, the tokenizer and the think markers."""

    task: Any
    problems: dict
    tokenizer: Any
    markers: Any
    max_completion: int
    model: Any = None  # the peft model being trained

    def render(self, question: str, control=None, value: float | None = None) -> str:
        """The chat prompt for one question (`control` at `value`: an effort-controlled one)."""
        return render_chat(self.tokenizer, question, control=control, value=value)

    def greedy(
        self, problems, contents: list[str] | None = None, batch: int = 64, temperature: float = 0.0
    ) -> dict[str, tuple[Rollout, list[int]]]:
        """Per problem id: the greedy rollout of the current model (HF generate) and its ids
        (`temperature` > 0: one sample instead)."""
        import torch

        tok, model = self.tokenizer, self.model
        side = tok.padding_side
        tok.padding_side = "left"
        out: dict[str, tuple[Rollout, list[int]]] = {}
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(problems), batch):
                chunk = problems[i : i + batch]
                texts = [
                    self.render(c) for c in (contents[i : i + batch] if contents else [p.question for p in chunk])
                ]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad():
                    sampling = (
                        dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                        if temperature > 0
                        else dict(do_sample=False)
                    )
                    gen = model.generate(
                        **enc,
                        max_new_tokens=self.max_completion,
                        **sampling,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                for p, row in zip(chunk, gen[:, enc["input_ids"].shape[1] :].tolist()):
                    if tok.eos_token_id in row:
                        row = row[: row.index(tok.eos_token_id) + 1]
                    out[p.id] = (parse_rollout(row, p, self.task, tok, self.markers, self.max_completion), row)
        finally:
            tok.padding_side = side
            model.train(was_training)
        return out

    def sft(
        self,
        pairs: list[tuple],
        steps: int,
        lr: float = 1e-3,
        batch: int = 32,
        seed: int = 0,
        log=print,
        done=None,
        check_from: int = 0,
        check_every: int = 50,
    ) -> float:
        """Supervised steps on the trainable (LoRA) parameters: (prompt text, completion ids[,
        per-token weights]) → loss on the completion only, the weighted mean of the token losses
        (weights default to 1). Returns the last loss.

        `done(step)`, when given, is asked after step `check_from` and every `check_every` steps
        after it; training stops early when it returns True (`steps` is then the most taken)."""
        import torch
        from effort_server.training.base_model import _pad

        tok, model = self.tokenizer, self.model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        rng = random.Random(seed)
        model.train()
        loss = torch.tensor(0.0)
        p_cache: dict[str, list[int]] = {}
        for step in range(steps):
            chunk = rng.sample(pairs, min(batch, len(pairs)))
            ids, labels, weights = [], [], []
            for prompt, completion, *w in chunk:
                p_ids = p_cache.setdefault(prompt, tok(prompt, add_special_tokens=False)["input_ids"])
                ids.append(p_ids + completion)
                labels.append([-100] * len(p_ids) + completion)
                weights.append([0.0] * len(p_ids) + list(w[0] if w else [1.0] * len(completion)))
            x, y, mask = _pad(ids, labels, tok.pad_token_id)
            wt = torch.zeros(x.shape)
            for i, w in enumerate(weights):
                wt[i, : len(w)] = torch.tensor(w)
            logits = model(input_ids=x.to(model.device), attention_mask=mask.to(model.device)).logits[:, :-1]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y[:, 1:].reshape(-1).to(model.device),
                ignore_index=-100,
                reduction="none",
            ).view(x.shape[0], -1)
            wt = wt[:, 1:].to(model.device)
            loss = (ce * wt).sum() / wt.sum().clamp_min(1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = step + 1
            if n % 20 == 0:
                log(f"warm-up step {n}/{steps}: loss {loss.item():.4f}")
            if done is not None and n >= check_from and (n - check_from) % check_every == 0 and n < steps:
                if done(n):
                    break
        return float(loss.item())
