"""The project's own on-disk dataset format (documented in docs/dataset-format.md).

```
DIR/dataset.json          {"format": "digzsl-dataset/1", "name", "classes", "unseen",
                           "val_classes" (optional), "multi_label" (optional)}
DIR/splits/<split>.csv    header "path,label"; path relative to DIR; label a class name, or for
                          multi-label data several names joined by "|"
DIR/images/...            the images (any layout; PNG or JPEG)
```
``<split>`` is ``trainval``, ``test_seen`` and ``test_unseen``. Seen classes are all classes not in
``unseen``. The validation split is carved out of trainval at load time (``val_fraction``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from digzsl_ray.data.split import SPLITS, Item, ZSLSplit, resolve
from digzsl_ray.errors import UserError
from digzsl_ray.io import read_json, write_json, write_text

FORMAT = "digzsl-dataset/1"


class DatasetFormatError(UserError):
    """A dataset directory that does not follow the format; the message names file and line."""


def write_dataset(
    out: str | Path,
    name: str,
    classes: list[str],
    unseen: list[str],
    rows: dict[str, list[tuple[str, list[str]]]],
    multi_label: bool = False,
    val_classes: list[str] | None = None,
    extra: dict | None = None,
) -> None:
    """Write ``dataset.json`` and ``splits/*.csv``. ``rows[split] = [(relative path, [names])]``.

    Images must already be under ``out``; this writes only the index files (atomically).
    """
    out = Path(out)
    meta = {"format": FORMAT, "name": name, "classes": classes, "unseen": unseen, "multi_label": multi_label}
    if val_classes:
        meta["val_classes"] = val_classes
    if extra:
        meta.update(extra)
    for split in SPLITS:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label"])
        for rel, names in rows.get(split, []):
            w.writerow([rel, "|".join(names)])
        write_text(out / "splits" / f"{split}.csv", buf.getvalue())
    write_json(out / "dataset.json", meta)


def read_dataset(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> ZSLSplit:
    """Read a dataset directory into a :class:`ZSLSplit` (no image is opened here)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetFormatError(f"{meta_path}: not found; expected a digzsl dataset directory (see docs/dataset-format.md)")
    try:
        meta = read_json(meta_path)
    except ValueError as e:  # also UnicodeDecodeError: not UTF-8
        raise DatasetFormatError(f"{meta_path}: not valid JSON, or not UTF-8 ({str(e)[:200]})") from None
    except RecursionError:
        raise DatasetFormatError(f"{meta_path}: nested too deeply") from None
    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{meta_path}: expected a JSON object, got a {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise DatasetFormatError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    for key in ("name", "classes", "unseen"):
        if key not in meta:
            raise DatasetFormatError(f"{meta_path}: missing key {key!r}")
    for key in ("classes", "unseen", "val_classes"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(c, str) for c in meta[key])):
            raise DatasetFormatError(f"{meta_path}: {key!r} must be a list of class names (strings)")
    classes = [str(c) for c in meta["classes"]]
    index: dict[str, int] = {}
    for i, c in enumerate(classes):
        index.setdefault(c, i)  # duplicates are reported by validate_split with their names
    multi = bool(meta.get("multi_label", False))

    def lookup(name: str, where: str) -> int:
        if name not in index:
            raise DatasetFormatError(f"{where}: unknown class {name!r} (not in dataset.json 'classes')")
        return index[name]

    unseen = [lookup(c, f"{meta_path} 'unseen'") for c in meta["unseen"]]
    val_classes = [lookup(c, f"{meta_path} 'val_classes'") for c in meta.get("val_classes", [])]
    seen = [i for i in range(len(classes)) if i not in set(unseen)]

    items: dict[str, list[Item]] = {}
    for split in SPLITS:
        path = root / "splits" / f"{split}.csv"
        if not path.is_file():
            raise DatasetFormatError(f"{path}: not found; every dataset needs splits/{{{','.join(SPLITS)}}}.csv")
        out: list[Item] = []
        lineno = 1
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM (Excel) is not part of the header
                reader = csv.reader(f)
                header = next(reader, None)
                if header != ["path", "label"]:
                    raise DatasetFormatError(f"{path}:1: header is {str(header)[:100]}, expected ['path', 'label']")
                for lineno, row in enumerate(reader, start=2):
                    if len(row) != 2 or not row[0]:
                        raise DatasetFormatError(f"{path}:{lineno}: expected 'path,label', got {str(row)[:200]}")
                    names = row[1].split("|") if multi else [row[1]]
                    labels = tuple(lookup(n, f"{path}:{lineno}") for n in names)
                    out.append(Item(resolve(root, row[0]), labels))
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{path}: not UTF-8 text (byte offset {e.start}); save it as UTF-8") from None
        except csv.Error as e:
            raise DatasetFormatError(f"{path}:{lineno + 1}: not valid CSV ({e})") from None
        items[split] = out
    split = ZSLSplit(
        name=str(meta["name"]),
        classes=classes,
        seen=seen,
        unseen=unseen,
        items=items,
        val_classes=val_classes,
        multi_label=multi,
        root=str(root),
    )
    split.carve_val(val_fraction, seed)  # multi-label: stratified by an image's first label
    return split
