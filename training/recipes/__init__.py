"""RL recipes: `effort train <recipe>`. Each module holds its rewards and its departures from
the paper; the shared GRPO machinery is `training.rl`."""

from __future__ import annotations

from .dler import DLER
from .dler_da import DLERDA
from .e1 import E1

RECIPES = {r.kind: r for r in (DLER, DLERDA, E1)}

__all__ = ["RECIPES", "DLER", "DLERDA", "E1"]
