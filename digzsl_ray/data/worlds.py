"""Worlds: dataset formats whose data a provider renders before the core reads it.

A world (MiniWorld is the built-in one) is a package that defines ``WORLD``, a :class:`World`:
how to render its dataset into a folder of the project format, and optionally a measuring
*oracle* (a classifier trained on the world's ground truth, never a training signal). The core
reaches a world only through this registry, by the name in ``data.format``; a real dataset or a
user's own folder has no world, and every oracle measurement is then recorded as absent.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

_BUILTIN = {"miniworld": "digzsl_ray.miniworld.provider",
            "miniworld-multilabel": "digzsl_ray.miniworld.provider:WORLD_MULTILABEL"}


class Oracle(Protocol):
    classes: list[str]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (into ``classes``) of images ``[N, 3, H, W]`` in 0..1."""


@dataclass(frozen=True)
class World:
    name: str
    # (root, data config, progress) -> folder of a digzsl-format dataset, rendered when missing
    prepare: Callable[[Path, Any, bool], Path]
    # () -> the oracle, or None when the world ships none
    load_oracle: Callable[[], Oracle | None] | None = None
    # () -> whether load_oracle would return one (cheap: no model loaded)
    oracle_available: Callable[[], bool] | None = None


def registered() -> dict[str, str]:
    out = dict(_BUILTIN)
    for ep in entry_points(group="digzsl_ray.worlds"):
        out.setdefault(ep.name, ep.value)
    return out


def get_world(name: str) -> World | None:
    """The world providing data format ``name``, or None (the format is a plain reader)."""
    entry = registered().get(name)
    if not entry:
        return None
    module, _, attr = entry.partition(":")  # "package.module" (its WORLD) or "package.module:ATTR"
    return getattr(importlib.import_module(module), attr or "WORLD")


def world_oracle(data_cfg) -> Oracle | None:
    world = get_world(data_cfg.format)
    return world.load_oracle() if world and world.load_oracle else None


def has_oracle(data_cfg) -> bool:
    """Whether the run's world provides an oracle (without loading it)."""
    world = get_world(data_cfg.format)
    return bool(world and world.oracle_available and world.oracle_available())
