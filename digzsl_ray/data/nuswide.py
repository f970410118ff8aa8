"""NUS-WIDE zero-shot multi-label split (925 seen Flickr tags / 81 unseen human concepts), both forms.

**Official release** (:func:`read_nuswide_official`; LESA's extraction reads the same files)::

    ROOT/Concepts81.txt                 81 concept names (the unseen labels)
    ROOT/NUS_WID_Tags/TagList1k.txt     1000 tag names; the 925 not among the concepts are the seen labels
    ROOT/NUS_WID_Tags/AllTags1k.txt     one row per image (Imagelist order): 1000 values 0/1
    ROOT/AllLabels/Labels_<c>.txt       one row per image: 0/1 for concept c
    ROOT/ImageList/Imagelist.txt        every image, e.g. C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg
    ROOT/ImageList/{Train,Test}Imagelist.txt   the official train/test membership
    IMAGES/<folder>/<file>.jpg          the images (IMAGES defaults to ROOT/Flickr)

Classes: the 925 seen tags in TagList1k order, then the 81 concepts in Concepts81 order (BiAM's
``cat(925, 81)``). ``trainval`` = train images with a seen tag (labels: seen tags);
``test_unseen`` = test images with a concept (the ZSL test set; labels: concepts and seen tags);
``test_seen`` = the other test images with a seen tag. Test images with no label at all (about a
fifth of NUS) go to ``items["test_unlabelled"]`` when ``keep_unlabelled`` (LESA/BiAM evaluate them,
the ``drop_unlabelled`` metric switch decides), else they are left out; their count is in ``notes``.

**DualCoOp format** (:func:`read_nuswide_dualcoop`; also Diff-ZS-MLC's)::

    ROOT/annotations/Tag_all/all_labels.txt     1006 names in DualCoOp's own order
    ROOT/annotations/zsl/cls_id.pickle          {'seen': 925 indices, 'unseen': 81 indices}
    ROOT/<npy_dir>/formatted_{train,val_gzsl}_images_filtered.npy   image paths (relative to IMAGES)
    ROOT/<npy_dir>/formatted_{train_all,val_gzsl}_labels_filtered.npy   N x 1006, 0/1

The class order is the file's (it cannot be rebuilt: a user must supply ``all_labels.txt``). The
pickle and the arrays are read without running code (:mod:`digzsl_ray.data.safeload`).
With ``concepts_file`` (Concepts81.txt) the unseen names are checked against the official list.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np

from digzsl_ray.data.coco import check_label_names
from digzsl_ray.data.format import DatasetFormatError
from digzsl_ray.data.safeload import load_npy, load_pickle
from digzsl_ray.data.split import Item, ZSLSplit

NUS_925_81 = (925, 81)


class NusWideFormatError(DatasetFormatError):
    """A NUS-WIDE file that does not follow the release's format; the message names file and line."""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise NusWideFormatError(f"{path}: not found")
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise NusWideFormatError(f"{path}: not UTF-8 text (byte offset {e.start})") from None


def _names(path: Path) -> list[str]:
    names = _lines(path)
    try:
        check_label_names(names, str(path))
    except DatasetFormatError as e:
        raise NusWideFormatError(str(e)) from None
    return names


def _binary_rows(path: Path, n_rows: int, width: int) -> np.ndarray:
    rows = _lines(path)
    if len(rows) != n_rows:
        raise NusWideFormatError(f"{path}: {len(rows)} rows, expected {n_rows} (one per line of Imagelist.txt)")
    out = np.zeros((n_rows, width), dtype=bool)
    for i, row in enumerate(rows):
        vals = row.split()
        if len(vals) != width or any(v not in ("0", "1") for v in vals):
            raise NusWideFormatError(f"{path}:{i + 1}: expected {width} values 0/1, got {row[:80]!r}")
        out[i] = [v == "1" for v in vals]
    return out


def _key(line: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001.jpg`` or ``actor\\0001.jpg`` -> ``actor/0001.jpg``."""
    parts = PureWindowsPath(line.strip()).parts
    return "/".join(parts[-2:])


def _assemble(name: str, classes: list[str], seen: list[int], unseen: list[int], rel_paths: list[str],
              labels: np.ndarray, is_train: np.ndarray, images: Path, keep_unlabelled: bool,
              val_fraction: float, seed: int) -> ZSLSplit:
    seen_m = np.zeros(len(classes), dtype=bool)
    seen_m[seen] = True
    items: dict[str, list[Item]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    unlabelled: list[Item] = []
    for i, rel in enumerate(rel_paths):
        row = labels[i]
        path = str(images / rel)
        if is_train[i]:
            labs = np.flatnonzero(row & seen_m)
            if len(labs):
                items["trainval"].append(Item(path, tuple(int(x) for x in labs)))
            continue
        labs = np.flatnonzero(row)
        if not len(labs):
            unlabelled.append(Item(path, ()))
        elif (row & ~seen_m).any():
            items["test_unseen"].append(Item(path, tuple(int(x) for x in labs)))
        else:
            items["test_seen"].append(Item(path, tuple(int(x) for x in labs)))
    if keep_unlabelled:
        items["test_unlabelled"] = unlabelled
    split = ZSLSplit(name=name, classes=classes, seen=seen, unseen=unseen, items=items, multi_label=True,
                     root=str(images), notes={"test_images_without_labels": len(unlabelled),
                                              "test_images_without_labels_kept": keep_unlabelled})
    split.carve_val(val_fraction, seed)
    return split


def read_nuswide_official(root: str | Path, images: str | Path | None = None,
                          expect: tuple[int, int] | None | str = "default", keep_unlabelled: bool = False,
                          val_fraction: float = 0.1, seed: int = 0) -> ZSLSplit:
    """The official NUS-WIDE release (see the module docstring); ``expect="default"`` checks 925 / 81."""
    expect = NUS_925_81 if expect == "default" else expect
    root = Path(root)
    images = Path(images) if images else root / "Flickr"
    concepts = _names(root / "Concepts81.txt")
    tags = _names(root / "NUS_WID_Tags" / "TagList1k.txt")
    seen_tags = [t for t in tags if t not in set(concepts)]
    if expect and (len(seen_tags), len(concepts)) != tuple(expect):
        raise NusWideFormatError(f"{root}: {len(seen_tags)} seen tags (TagList1k.txt minus Concepts81.txt) / "
                                 f"{len(concepts)} concepts, expected {expect[0]} / {expect[1]}")
    all_list = [_key(x) for x in _lines(root / "ImageList" / "Imagelist.txt")]
    n = len(all_list)
    where = {k: i for i, k in enumerate(all_list)}
    is_train = np.zeros(n, dtype=bool)
    for fname, flag in (("TrainImagelist.txt", True), ("TestImagelist.txt", False)):
        path = root / "ImageList" / fname
        for ln, line in enumerate(_lines(path), start=1):
            k = _key(line)
            if k not in where:
                raise NusWideFormatError(f"{path}:{ln}: {line!r} is not in Imagelist.txt")
            is_train[where[k]] = flag
    tag_rows = _binary_rows(root / "NUS_WID_Tags" / "AllTags1k.txt", n, len(tags))
    tag_col = {t: j for j, t in enumerate(tags)}
    labels = np.zeros((n, len(seen_tags) + len(concepts)), dtype=bool)
    labels[:, : len(seen_tags)] = tag_rows[:, [tag_col[t] for t in seen_tags]]
    for j, c in enumerate(concepts):
        labels[:, len(seen_tags) + j] = _binary_rows(root / "AllLabels" / f"Labels_{c}.txt", n, 1)[:, 0]
    classes = seen_tags + concepts
    return _assemble("nus-wide", classes, list(range(len(seen_tags))),
                     list(range(len(seen_tags), len(classes))), all_list, labels, is_train, images,
                     keep_unlabelled, val_fraction, seed)


def read_nuswide_dualcoop(root: str | Path, images: str | Path | None = None, npy_dir: str = "annotations/zsl",
                          concepts_file: str | Path | None = None, expect: tuple[int, int] | None | str = "default",
                          keep_unlabelled: bool = False, small: bool = False, val_fraction: float = 0.1,
                          seed: int = 0) -> ZSLSplit:
    """DualCoOp's formatted NUS-WIDE files (see the module docstring); ``expect="default"`` checks 925 / 81."""
    expect = NUS_925_81 if expect == "default" else expect
    root = Path(root)
    images = Path(images) if images else root / "images"
    names_path = root / "annotations" / "Tag_all" / "all_labels.txt"
    classes = _names(names_path)
    ids_path = root / "annotations" / "zsl" / "cls_id.pickle"
    ids = load_pickle(ids_path)
    if not isinstance(ids, dict) or not {"seen", "unseen"} <= set(ids):
        raise NusWideFormatError(f"{ids_path}: expected a dict with 'seen' and 'unseen' index lists")
    try:
        seen, unseen = ([int(x) for x in np.asarray(ids[k]).ravel()] for k in ("seen", "unseen"))
    except (TypeError, ValueError):
        raise NusWideFormatError(f"{ids_path}: 'seen' and 'unseen' must hold class indices") from None
    bad = [i for i in seen + unseen if not 0 <= i < len(classes)]
    if bad:
        raise NusWideFormatError(f"{ids_path}: index {bad[0]} is out of range for the {len(classes)} names of {names_path}")
    both = sorted(set(seen) & set(unseen))
    if both:
        raise NusWideFormatError(f"{ids_path}: index {both[0]} ({classes[both[0]]!r}) is both seen and unseen")
    if expect and (len(seen), len(unseen)) != tuple(expect):
        raise NusWideFormatError(f"{ids_path}: {len(seen)} seen / {len(unseen)} unseen, expected {expect[0]} / {expect[1]}")
    if concepts_file:
        official = _names(Path(concepts_file))
        mine = [classes[i] for i in unseen]
        extra = next((c for c in mine if c not in set(official)), None)
        if extra is not None or len(mine) != len(official):
            missing = next((c for c in official if c not in set(mine)), None)
            raise NusWideFormatError(f"{ids_path}: unseen classes differ from {concepts_file}: first mismatch "
                                     + (f"{extra!r} is not an official concept" if extra is not None
                                        else f"{missing!r} is missing"))
    suffix = "_small" if small else ""
    parts = []
    for img_part, lab_part, train in (("train", "train_all", True), ("val_gzsl", "val_gzsl", False)):
        ip = root / npy_dir / f"formatted_{img_part}_images_filtered{suffix}.npy"
        lp = root / npy_dir / f"formatted_{lab_part}_labels_filtered{suffix}.npy"
        paths, labs = load_npy(ip), load_npy(lp)
        if labs.ndim != 2 or labs.shape[1] != len(classes):
            raise NusWideFormatError(f"{lp}: shape {labs.shape}, expected [N, {len(classes)}] (one column per "
                                     f"name of {names_path})")
        if len(paths) != len(labs):
            raise NusWideFormatError(f"{ip}: {len(paths)} images but {lp} has {len(labs)} label rows")
        if not np.isin(labs, (0, 1)).all():
            raise NusWideFormatError(f"{lp}: labels must be 0/1, found {labs[~np.isin(labs, (0, 1))].flat[0]!r}")
        parts.append(([p.decode() if isinstance(p, bytes) else str(p) for p in paths.ravel()], labs.astype(bool),
                      np.full(len(labs), train)))
    rel = parts[0][0] + parts[1][0]
    return _assemble("nus-wide", classes, sorted(seen), sorted(unseen), rel, np.concatenate([parts[0][1], parts[1][1]]),
                     np.concatenate([parts[0][2], parts[1][2]]), images, keep_unlabelled, val_fraction, seed)
