"""MiniWorld as a world of the data registry (:mod:`digzsl_ray.data.worlds`): ``data.format:
miniworld`` renders the ZSL benchmark into the dataset root when missing and reads it in the project
format; the shipped oracle is its measuring hook. ``data.format: miniworld-multilabel`` renders the
multi-label scenes (2-3 objects on a 2 x 2 grid of cells, 64 px); the single-object oracle does not
measure scenes, so that world has none."""

from __future__ import annotations

from pathlib import Path

import torch

from digzsl_ray.data.worlds import World
from digzsl_ray.models.presets import ASSETS

ORACLE_DIR = ASSETS / "oracle"


def prepare(root: Path, data_cfg, progress: bool = True) -> Path:
    zsl = Path(root) / "zsl"
    if not (zsl / "dataset.json").is_file():
        from digzsl_ray.miniworld.make import WorldParams, make_world

        make_world(root, WorldParams(seed=data_cfg.miniworld_seed), progress=progress, parts=("zsl",))
    return zsl


def prepare_multilabel(root: Path, data_cfg, progress: bool = True) -> Path:
    ml = Path(root) / "zsl_multilabel"
    if not (ml / "dataset.json").is_file():
        from digzsl_ray.miniworld.make import WorldParams, make_world

        make_world(root, WorldParams(seed=data_cfg.miniworld_seed), progress=progress, parts=("multilabel",))
    return ml


class MiniWorldOracle:
    def __init__(self, path: Path):
        from digzsl_ray.miniworld.oracle import load_oracle

        self.model, self.classes = load_oracle(path)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        from digzsl_ray.miniworld.oracle import oracle_predict

        return oracle_predict(self.model, images)


def oracle_available() -> bool:
    return (ORACLE_DIR / "config.json").is_file()


def load_oracle() -> MiniWorldOracle | None:
    return MiniWorldOracle(ORACLE_DIR) if oracle_available() else None


WORLD = World(name="miniworld", prepare=prepare, load_oracle=load_oracle, oracle_available=oracle_available)
WORLD_MULTILABEL = World(name="miniworld-multilabel", prepare=prepare_multilabel)
