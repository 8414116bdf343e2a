"""The one prompt renderer: what the model sees for a request, in serving, evaluation and training.

`render_prompt(tokenizer, messages, control=…, effort=… | value=…)`: `messages` is a chat (a
string is one user turn); an effort-controlled adapter's control (its manifest's `Control`) is
written into the last user turn (else the last message) — at `effort` through the adapter's calibration (keyed by that
turn's text, as the server does it), or at a raw control `value` (training); then the model's
chat template with the generation prompt. Server, evaluator and RL all call this, so their
prompts agree token for token.
"""

from __future__ import annotations

from typing import Any


def render_prompt(tokenizer, messages: str | list[dict[str, Any]], control=None, effort: float | None = None,
                  value: float | None = None, **template_kwargs) -> str:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    if control is not None and (effort is not None or value is not None):
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=len(msgs) - 1)
        text = msgs[last]["content"]
        msgs[last]["content"] = control.render(text, value) if value is not None else control.apply(text, effort)
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **template_kwargs)
