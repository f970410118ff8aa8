"""Datasets: the in-memory ZSL split, its readers (project format, xlsa17) and validation."""

from __future__ import annotations

from pathlib import Path

from .split import Item, ZSLSplit

__all__ = ["Item", "ZSLSplit", "load_split", "dataset_root"]


def dataset_root(data_cfg, out: str | Path | None) -> Path:
    """Where the dataset of ``data_cfg`` lives (MiniWorld defaults to OUT/data/miniworld)."""
    if data_cfg.root:
        return Path(data_cfg.root).expanduser()
    if data_cfg.format == "miniworld":
        if out is None:
            raise ValueError("data.root: empty; a MiniWorld run renders its data into OUT/data/miniworld, give --out")
        return Path(out) / "data" / "miniworld"
    raise ValueError(f"data.root: empty; format {data_cfg.format!r} needs the dataset directory or image root")


def load_split(data_cfg, out: str | Path | None = None, validate: bool = True, progress: bool = True) -> ZSLSplit:
    """Read (and for MiniWorld, render when missing) the dataset of a :class:`DataConfig`, then validate it.

    Validation runs before any model work: structure first, then every image file when
    ``data_cfg.check_images`` is set (see :mod:`digzsl_ray.data.validate`).
    """
    from .format import read_dataset
    from .validate import validate_split

    root = dataset_root(data_cfg, out)
    if data_cfg.format == "miniworld":
        zsl = root / "zsl"
        if not (zsl / "dataset.json").is_file():
            from ..miniworld.make import WorldParams, make_world

            make_world(root, WorldParams(seed=data_cfg.miniworld_seed), progress=progress, parts=("zsl",))
        split = read_dataset(zsl, data_cfg.val_fraction, seed=0)
    elif data_cfg.format == "digzsl":
        split = read_dataset(root, data_cfg.val_fraction, seed=0)
    else:
        from .xlsa17 import read_xlsa17

        if not data_cfg.splits_dir:
            raise ValueError("data.splits_dir: empty; format 'xlsa17' needs the folder holding att_splits.mat")
        if not data_cfg.dataset:
            raise ValueError("data.dataset: empty; format 'xlsa17' needs one of CUB, AWA2, SUN, FLO")
        split = read_xlsa17(data_cfg.splits_dir, root, data_cfg.dataset, val_fraction=data_cfg.val_fraction,
                            val_split=data_cfg.val_split, seed=0,
                            class_names_file=data_cfg.class_names_file or None)
    if validate:
        validate_split(split, images=data_cfg.check_images, progress=progress)
    return split
