"""MS-COCO 2014 zero-shot multi-label split (48 seen / 17 unseen, Bansal et al. 2018).

Inputs are what users have: the official ``instances_train2014.json`` / ``instances_val2014.json``
and Bansal et al.'s class lists (``mscoco_seen_classes.json`` / ``mscoco_unseen_classes.json``, a
JSON list of names, or a text file with one name per line). The split is built with the standard
recipe (RegionCLIP ``filter_annotation``): keep only the split's categories and annotations, and only
images that hold at least one of them:

* ``trainval``: train2014 images with a seen object; labels = their seen categories (unseen objects
  in them are not labelled: nothing of an unseen class is ever a training label);
* ``test_unseen``: val2014 images with an unseen object (the ZSL test set); labels = all of their
  65 split categories (ZSL scores the unseen columns, GZSL all);
* ``test_seen``: the other val2014 images with a seen object. ``test_seen + test_unseen`` is the
  GZSL test set over all 65 classes (DualCoOp's ``instances_val2014_gzsi_48_17.json``).

Images with no object of the split never enter (as in DualCoOp's loader). Class order is the
COCO category-id order restricted to the 65 split classes. :func:`write_split_jsons` writes the
filtered JSONs (``instances_train2014_seen_48_17.json``, ``instances_val2014_unseen_48_17.json``,
``instances_val2014_gzsi_48_17.json``) for tools that read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from digzsl_ray.data.format import DatasetFormatError
from digzsl_ray.data.split import Item, ZSLSplit
from digzsl_ray.io import write_json

LABEL_SEPARATOR = "|"  # the project format joins a label set with it (docs/dataset-format.md)
COCO_48_17 = (48, 17)


class CocoFormatError(DatasetFormatError):
    """A COCO annotation file or class list that cannot be read; the message names the file."""


@dataclass
class _Instances:
    path: Path
    categories: dict[int, str]  # id -> name, in id order
    images: dict[int, str]  # id -> file_name
    labels: dict[int, set[int]]  # image id -> category ids


def read_class_list(path: str | Path) -> list[str]:
    """A JSON list of names or one name per line; duplicates, empty names and the separator are errors."""
    path = Path(path)
    if not path.is_file():
        raise CocoFormatError(f"{path}: class list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path}: not UTF-8 text (byte offset {e.start}); save it as UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise CocoFormatError(f"{path}: not valid JSON ({str(e)[:200]})") from None
        except RecursionError:
            raise CocoFormatError(f"{path}: nested too deeply") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CocoFormatError(f"{path}: expected a JSON list of class names (strings)")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    check_label_names(names, str(path))
    return names


def check_label_names(names: list[str], source: str) -> None:
    if not names:
        raise CocoFormatError(f"{source}: no class names")
    for i, n in enumerate(names):
        if not n.strip():
            raise CocoFormatError(f"{source}: class {i} has an empty name")
        if LABEL_SEPARATOR in n:
            raise CocoFormatError(f"{source}: class name {n!r} contains {LABEL_SEPARATOR!r}, the label-set separator")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise CocoFormatError(f"{source}: class {n!r} is listed twice")
        seen.add(n)


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise CocoFormatError(f"{path}: not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CocoFormatError(f"{path}: not valid JSON ({str(e)[:200]})") from None


def _read_instances(path: Path, data: dict | None = None) -> _Instances:
    data = _load_json(path) if data is None else data
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise CocoFormatError(f"{path}: expected a COCO instances file with 'images', 'annotations' and 'categories'")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in sorted(data["categories"], key=lambda c: int(c["id"]))}
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        labels: dict[int, set[int]] = {}
        for i, a in enumerate(data["annotations"]):
            img, cat = int(a["image_id"]), int(a["category_id"])
            if cat not in cats:
                raise CocoFormatError(f"{path}: annotation {i} has category_id {cat}, not in 'categories'")
            if img not in images:
                raise CocoFormatError(f"{path}: annotation {i} has image_id {img}, not in 'images'")
            labels.setdefault(img, set()).add(cat)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CocoFormatError):
            raise
        raise CocoFormatError(f"{path}: malformed entry ({type(e).__name__}: {e})") from None
    return _Instances(path, cats, images, labels)


def _ids_of(names: list[str], inst: _Instances, list_path: Path) -> list[int]:
    by_name = {n: i for i, n in inst.categories.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CocoFormatError(f"{list_path}: class {missing[0]!r} is not a category of {inst.path}"
                              + (f" ({len(missing)} unknown in all)" if len(missing) > 1 else ""))
    return [by_name[n] for n in names]


def read_coco_zsl(annotations: str | Path, images_root: str | Path, seen_file: str | Path,
                  unseen_file: str | Path, expect: tuple[int, int] | None | str = "default",
                  train_json: str = "instances_train2014.json", val_json: str = "instances_val2014.json",
                  train_dir: str = "train2014", val_dir: str = "val2014", val_fraction: float = 0.1,
                  seed: int = 0) -> ZSLSplit:
    """The COCO ZSL split (see the module docstring); ``expect`` = (n seen, n unseen) or None.

    ``val_fraction`` of trainval is held out for model selection (stratified by an image's first label).
    ``expect="default"`` checks :data:`COCO_48_17`.
    """
    expect = COCO_48_17 if expect == "default" else expect
    annotations, images_root = Path(annotations), Path(images_root)
    seen_names, unseen_names = read_class_list(seen_file), read_class_list(unseen_file)
    both = sorted(set(seen_names) & set(unseen_names))
    if both:
        raise CocoFormatError(f"{unseen_file}: {both[0]!r} is also in {seen_file}")
    if expect and (len(seen_names), len(unseen_names)) != tuple(expect):
        raise CocoFormatError(f"{seen_file} / {unseen_file}: {len(seen_names)} seen / {len(unseen_names)} unseen "
                              f"classes, expected {expect[0]} / {expect[1]}")
    train, val = _read_instances(annotations / train_json), _read_instances(annotations / val_json)
    if train.categories != val.categories:
        first = next((i for i in sorted(set(train.categories) | set(val.categories))
                      if train.categories.get(i) != val.categories.get(i)), None)
        raise CocoFormatError(f"{val.path}: categories differ from {train.path} (first at id {first}: "
                              f"{val.categories.get(first)!r} vs {train.categories.get(first)!r})")
    seen_ids = set(_ids_of(seen_names, train, Path(seen_file)))
    unseen_ids = set(_ids_of(unseen_names, train, Path(unseen_file)))
    order = [i for i in train.categories if i in seen_ids | unseen_ids]  # category-id order
    col = {cid: j for j, cid in enumerate(order)}
    classes = [train.categories[i] for i in order]

    def items(inst: _Instances, folder: str, keep: set[int]) -> list[tuple[int, Item]]:
        out = []
        for img in sorted(inst.labels):
            labs = sorted(col[c] for c in inst.labels[img] if c in keep)
            if labs:
                out.append((img, Item(str(images_root / folder / inst.images[img]), tuple(labs))))
        return out

    unseen_cols = {col[c] for c in unseen_ids}
    test = items(val, val_dir, seen_ids | unseen_ids)
    split = ZSLSplit(
        name="coco",
        classes=classes,
        seen=sorted(col[c] for c in seen_ids),
        unseen=sorted(unseen_cols),
        items={"trainval": [it for _, it in items(train, train_dir, seen_ids)],
               "test_unseen": [it for _, it in test if unseen_cols & set(it.labels)],
               "test_seen": [it for _, it in test if not unseen_cols & set(it.labels)]},
        multi_label=True,
        root=str(images_root),
    )
    split.carve_val(val_fraction, seed)
    return split


def write_split_jsons(annotations: str | Path, seen_file: str | Path, unseen_file: str | Path, out: str | Path,
                      train_json: str = "instances_train2014.json", val_json: str = "instances_val2014.json",
                      tag: str = "48_17") -> dict[str, Path]:
    """Filtered COCO JSONs: train/seen, val/unseen, val/all (``gzsi``); returns their paths."""
    annotations, out = Path(annotations), Path(out)
    seen_names, unseen_names = read_class_list(seen_file), read_class_list(unseen_file)
    written = {}
    for src, which, names in ((train_json, "seen", seen_names), (val_json, "unseen", unseen_names),
                              (val_json, "gzsi", seen_names + unseen_names)):
        data = _load_json(annotations / src)
        inst = _read_instances(annotations / src, data)
        keep = set(_ids_of(names, inst, Path(unseen_file if which == "unseen" else seen_file)))
        anns = [a for a in data["annotations"] if int(a["category_id"]) in keep]
        imgs = {int(a["image_id"]) for a in anns}
        filtered = dict(data, categories=[c for c in data["categories"] if int(c["id"]) in keep],
                        annotations=anns, images=[im for im in data["images"] if int(im["id"]) in imgs])
        path = out / f"{Path(src).stem}_{which}_{tag}.json"
        write_json(path, filtered)
        written[which] = path
    return written
