"""Datasets: the in-memory ZSL split, its readers (project format, xlsa17, class folders, multi-label) and validation."""

from __future__ import annotations

from pathlib import Path

from digzsl_ray.config import ConfigError
from digzsl_ray.data.split import Item, ZSLSplit

__all__ = ["Item", "ZSLSplit", "load_split", "dataset_root", "MULTI_LABEL_FORMATS"]

MULTI_LABEL_FORMATS = ("coco", "nuswide", "nuswide-dualcoop")


def dataset_root(data_cfg, out: str | Path | None) -> Path:
    """Where the dataset of ``data_cfg`` lives (a rendered world defaults to OUT/data/<format>)."""
    from digzsl_ray.data.worlds import get_world

    if data_cfg.root:
        return Path(data_cfg.root).expanduser()
    if get_world(data_cfg.format) is not None:
        if out is None:
            raise ConfigError(f"data.root: empty; a {data_cfg.format} run renders its data into "
                              f"OUT/data/{data_cfg.format}: give --out OUT (or set data.root)")
        return Path(out) / "data" / data_cfg.format
    raise ConfigError(f"data.root: empty; format {data_cfg.format!r} needs the dataset directory "
                      f"(digzsl), the image root (xlsa17, coco, nuswide) or the folder of class folders (imagefolder)")


def load_split(data_cfg, out: str | Path | None = None, validate: bool = True, progress: bool = True) -> ZSLSplit:
    """Read (and for MiniWorld, render when missing) the dataset of a :class:`DataConfig`, then validate it.

    Validation runs before any model work: structure first, then every image file when
    ``data_cfg.check_images`` is set (see :mod:`digzsl_ray.data.validate`).
    """
    from digzsl_ray.data.format import read_dataset
    from digzsl_ray.data.validate import validate_split
    from digzsl_ray.data.worlds import get_world

    root = dataset_root(data_cfg, out)
    world = get_world(data_cfg.format)
    if world is not None:
        split = read_dataset(world.prepare(root, data_cfg, progress), data_cfg.val_fraction, seed=data_cfg.val_seed)
    elif data_cfg.format == "digzsl":
        split = read_dataset(root, data_cfg.val_fraction, seed=data_cfg.val_seed)
    elif data_cfg.format in MULTI_LABEL_FORMATS:
        split = _read_multi_label(data_cfg, root)
    elif data_cfg.format == "imagefolder":
        split = _read_imagefolder(data_cfg, root)
    else:
        from digzsl_ray.data.xlsa17 import read_xlsa17

        if not data_cfg.splits_dir:
            raise ConfigError("data.splits_dir: empty; format 'xlsa17' needs the folder holding att_splits.mat")
        if not data_cfg.dataset:
            raise ConfigError("data.dataset: empty; format 'xlsa17' needs one of CUB, AWA2, SUN, FLO")
        split = read_xlsa17(data_cfg.splits_dir, root, data_cfg.dataset, val_fraction=data_cfg.val_fraction,
                            val_split=data_cfg.val_split, seed=data_cfg.val_seed,
                            class_names_file=data_cfg.class_names_file or None)
    if getattr(data_cfg, "exclude_classes", None):
        try:
            split = split.without_classes(list(data_cfg.exclude_classes))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if validate:
        validate_split(split, images=data_cfg.check_images, progress=progress)
    return split


def _read_imagefolder(data_cfg, root: Path) -> ZSLSplit:
    from digzsl_ray.data.coco import read_class_list
    from digzsl_ray.data.imagefolder import read_imagefolder

    if data_cfg.unseen_classes and data_cfg.unseen_classes_file:
        raise ConfigError("data.unseen_classes and data.unseen_classes_file: both given; format 'imagefolder' "
                          "takes the unseen class names from one of them")
    if data_cfg.unseen_classes:
        unseen, source = list(data_cfg.unseen_classes), "data.unseen_classes"
    elif data_cfg.unseen_classes_file:
        unseen, source = read_class_list(data_cfg.unseen_classes_file), f"data.unseen_classes_file {data_cfg.unseen_classes_file}"
    else:
        raise ConfigError("data.unseen_classes: empty; format 'imagefolder' needs the unseen class names "
                          "(data.unseen_classes, or data.unseen_classes_file: a JSON list or one name a line)")
    return read_imagefolder(root, unseen, test_root=data_cfg.test_root or None, test_fraction=data_cfg.test_fraction,
                            test_seed=data_cfg.test_seed, val_fraction=data_cfg.val_fraction, val_seed=data_cfg.val_seed,
                            class_names_file=data_cfg.class_names_file or None, unseen_source=source)


def _read_multi_label(data_cfg, root: Path) -> ZSLSplit:
    if not data_cfg.annotations:
        raise ConfigError(f"data.annotations: empty; format {data_cfg.format!r} needs the folder of its annotation files")
    ann = Path(data_cfg.annotations).expanduser()
    common = dict(val_fraction=data_cfg.val_fraction, seed=data_cfg.val_seed)
    if data_cfg.format == "coco":
        from digzsl_ray.data.coco import read_coco_zsl

        for key in ("seen_classes_file", "unseen_classes_file"):
            if not getattr(data_cfg, key):
                raise ConfigError(f"data.{key}: empty; format 'coco' needs Bansal et al.'s class lists")
        return read_coco_zsl(ann, root, data_cfg.seen_classes_file, data_cfg.unseen_classes_file, **common)
    from digzsl_ray.data.nuswide import read_nuswide_dualcoop, read_nuswide_official

    if data_cfg.format == "nuswide":
        return read_nuswide_official(ann, root, keep_unlabelled=data_cfg.keep_unlabelled, **common)
    return read_nuswide_dualcoop(ann, root, concepts_file=data_cfg.concepts_file or None,
                                 keep_unlabelled=data_cfg.keep_unlabelled, **common)
