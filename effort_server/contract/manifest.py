"""Manifests: what training writes and the server reads (design §3).

A model folder and every adapter folder carry a ``manifest.json``; this schema is part of the
contract both halves import. The think markers live here and nowhere else:
the server gives them to vLLM's reasoning config as strings, never as token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A missing, unreadable or invalid manifest."""


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    think_start: str = Field("<think>", description="marker that opens the thinking")
    think_end: str = Field("</think>", description="marker that closes the thinking")

    def write(self, folder: str | Path) -> Path:
        """Write atomically: a temp file in the same folder, then rename."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=2))
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / MANIFEST)
        return folder / MANIFEST

    @classmethod
    def read(cls, folder: str | Path):
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST} in {folder}")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError) as e:
            raise ManifestError(f"invalid {path}: {e}") from None


class ModelManifest(_Manifest):
    """A base model's own facts (the embedded model ships one)."""

    task: str | None = Field(None, description="task the model was trained on")
    default_full_effort_tokens: int = Field(
        512, description="typical full-effort reasoning length; the policy's L̂ until a router is fitted"
    )
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)


class Control(BaseModel):
    """How effort is written into the prompt (e1). ``template`` gets ``{effort}`` and ``{prompt}``.

    ``calibration`` (written by e1's calibration step) maps a requested effort to the control
    value whose realised reasoning length is that fraction of full: points
    ``[requested, control]``, clamped at the ends; empty = identity. Between two points the
    control value is linearly interpolated, or, with ``mix``, one of the two points' controls is
    used — the upper one for a fraction of prompts equal to the position between them, chosen by
    a hash of the prompt (the same prompt always gets the same control, and a higher effort never
    a lower one). A model whose length comes in a few discrete paths (a plain chain, a partial
    re-check, the whole re-check) meets an effort between two paths on average that way, where an
    interpolated control value it was never trained on lands on either path unpredictably."""

    kind: Literal["prompt-prefix", "none"] = "none"
    template: str = "{prompt}"
    effort_format: str = "{:.2f}"
    calibration: list[tuple[float, float]] = Field(default_factory=list)
    mix: bool = False

    def value_for(self, effort: float, key: str = "") -> float:
        """The control value for a requested effort; `key` (the prompt) picks the side of a mix."""
        pts = sorted(self.calibration)
        if not pts:
            return effort
        if effort <= pts[0][0]:
            return pts[0][1]
        for (e0, c0), (e1, c1) in zip(pts, pts[1:]):
            if effort <= e1:
                t = 0.0 if e1 == e0 else (effort - e0) / (e1 - e0)
                if self.mix:
                    return c1 if _unit(key) < t else c0
                return c0 + t * (c1 - c0)
        return pts[-1][1]

    def with_value(self, prompt: str, value: float) -> str:
        """The prompt carrying control value `value` as is (no calibration)."""
        if self.kind == "none":
            return prompt
        return self.template.format(prompt=prompt, effort=self.effort_format.format(value))

    def for_effort(self, prompt: str, effort: float) -> str:
        """The prompt for a requested effort (through the calibration)."""
        return self.with_value(prompt, self.value_for(effort, prompt))


def _unit(key: str) -> float:
    """A number in [0, 1) fixed by `key` (uniform over keys)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


class AdapterManifest(_Manifest):
    kind: Literal["dler", "dler-da", "e1", "merged", "sft", "other"]
    base_model: str = Field(description="base model path or id")
    base_model_hash: str | None = Field(None, description="hash or revision of the base model")
    control: Control = Field(default_factory=Control)
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)


def model_hash(model_path: str | Path) -> str:
    """sha256 (first 16 hex) of the model's weights file(s): which base an adapter was trained on."""

    h = hashlib.sha256()
    files = sorted(Path(model_path).glob("*.safetensors"))
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16] if files else "unknown"
