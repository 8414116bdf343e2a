"""The one prompt renderer: chat messages and an adapter's effort control → the model's prompt.

The server, the evaluator and RL training all render through `render_chat` / `chat_ids`, so the
prompt an adapter is trained and evaluated on is the prompt it is served, token for token.
Inputs: the tokenizer (its chat template), the messages (`{"role", "content"}` dicts, or one
question as a string), optionally a `Control` with a requested `effort` (mapped through the
control's calibration) or a raw control `value`, and keyword arguments for the template (e.g.
`enable_thinking`). Output: the text with the generation prompt, or its ids (encoded without
special tokens: the template writes them). The control text goes into the last user message
(the last message when there is none); the caller's messages are not modified.
"""

from __future__ import annotations

from typing import Any

from .manifest import Control


def with_control(
    messages: list[dict], control: Control | None, effort: float | None = None, value: float | None = None
) -> list[dict]:
    """A copy of `messages` whose last user message carries the control for `effort` (or `value`)."""
    msgs = [dict(m) for m in messages]
    if control is None or control.kind == "none" or not msgs or (effort is None and value is None):
        return msgs
    users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    last = users[-1] if users else len(msgs) - 1
    text = msgs[last]["content"]
    msgs[last]["content"] = control.with_value(text, value) if value is not None else control.for_effort(text, effort)
    return msgs


def render_chat(
    tokenizer: Any,
    messages: list[dict] | str,
    control: Control | None = None,
    effort: float | None = None,
    value: float | None = None,
    **template_kwargs,
) -> str:
    """The chat-templated prompt text (generation prompt included)."""
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    msgs = with_control(msgs, control, effort, value)
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **template_kwargs)


def chat_ids(tokenizer: Any, messages: list[dict] | str, **kwargs) -> list[int]:
    """`render_chat`'s text as token ids."""
    return tokenizer.encode(render_chat(tokenizer, messages, **kwargs), add_special_tokens=False)
