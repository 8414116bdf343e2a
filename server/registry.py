"""The adapter registry: adapter name → folder + manifest, loaded once at start.

Requests select adapters by registered name only; paths never come from requests. A folder
that lacks the peft files or has an invalid manifest is skipped with a log line, never fatal.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..contract.manifest import AdapterManifest, ManifestError

log = logging.getLogger("effort.registry")
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    manifest: AdapterManifest
    lora_id: int  # vLLM's integer id, stable for the life of the registry


def load_adapter(path: Path) -> AdapterManifest:
    """Validate one adapter folder; raises ManifestError saying what is wrong."""
    if not path.is_dir():
        raise ManifestError(f"adapter folder not found: {path}")
    missing = [f for f in PEFT_FILES if not (path / f).is_file()]
    if missing:
        raise ManifestError(f"{path}: missing {', '.join(missing)}")
    m = AdapterManifest.read(path)
    if not NAME_RE.match(m.name):
        raise ManifestError(f"{path}: adapter name {m.name!r} must match {NAME_RE.pattern}")
    return m


def scan(paths: list[str | Path]) -> dict[str, Adapter]:
    """Adapters from `paths`: each either an adapter folder or a folder of adapter folders."""
    found: dict[str, Adapter] = {}
    folders: list[Path] = []
    for p in map(Path, paths):
        if (p / "manifest.json").exists() or (p / PEFT_FILES[0]).exists():
            folders.append(p)
        elif p.is_dir():
            # sub-folders that hold neither a manifest nor peft files (reports, notes) are not adapters
            folders += sorted(
                c
                for c in p.iterdir()
                if c.is_dir()
                and not c.name.startswith(".")
                and ((c / "manifest.json").exists() or (c / PEFT_FILES[0]).exists())
            )
        else:
            log.warning("adapter path %s does not exist; skipped", p)
    for folder in folders:
        try:
            m = load_adapter(folder)
        except ManifestError as e:
            log.warning("skipping adapter: %s", e)
            continue
        if m.name in found:
            log.warning("skipping adapter %s: name %r already registered from %s", folder, m.name, found[m.name].path)
            continue
        found[m.name] = Adapter(m.name, folder.resolve(), m, lora_id=len(found) + 1)
    return found
