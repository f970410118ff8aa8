"""Class semantics a [C, A] for the generators, from ``semantics.source``:

* ``prototypes``: the run's CLIP class-name prototypes (OUT/prototypes.safetensors; no annotation);
* ``att`` / ``original_att``: xlsa17 ``att_splits.mat`` (stored A x C; ``original_att`` is what the
  ZeroDiff reference uses, L2-normalised);
* ``sent``: CUB's ``sent_splits.mat`` (``att``, 1024 x C sentence embeddings);
* ``miniworld``: the rendered attributes of a digzsl-format dataset (``dataset.json`` ``attributes``:
  one-hot pattern, colour and shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from digzsl_ray.errors import UserError


class SemanticsError(UserError):
    pass


def class_semantics(cfg, split, prototypes_path: Path) -> np.ndarray:
    s = cfg.semantics
    if s.source == "prototypes":
        from digzsl_ray.prototypes import load_prototypes

        protos, names, _ = load_prototypes(prototypes_path)
        if list(names) != list(split.classes):
            raise SemanticsError(f"{prototypes_path}: classes differ from the split's; rerun `digzsl prototypes`")
        a = protos.float().numpy()
    elif s.source in ("att", "original_att", "sent"):
        a = _mat_semantics(cfg, s.source, len(split.classes))
    else:
        a = miniworld_attributes(Path(split.root) / "dataset.json", split.classes)
    a = a.astype(np.float32)
    if s.normalise:
        a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    return a


def _mat_semantics(cfg, key: str, n_classes: int) -> np.ndarray:
    from digzsl_ray.data.xlsa17 import _load_mat

    default = "sent_splits.mat" if key == "sent" else "att_splits.mat"
    if not cfg.semantics.file and not cfg.data.splits_dir:
        raise SemanticsError(f"semantics.file: empty and data.splits_dir empty; semantics {key!r} needs {default}")
    path = Path(cfg.semantics.file or Path(cfg.data.splits_dir) / default).expanduser()
    field = "att" if key == "sent" else key
    mat = _load_mat(path, f"the xlsa17 {default}", variable_names=[field])
    if field not in mat:
        raise SemanticsError(f"{path}: no field {field!r}")
    a = np.asarray(mat[field], dtype=np.float64)
    if a.ndim != 2 or n_classes not in a.shape:
        raise SemanticsError(f"{path}: {field!r} has shape {a.shape}; expected (dims, {n_classes})")
    return a.T if a.shape[1] == n_classes else a


def miniworld_attributes(dataset_json: Path, classes: list[str]) -> np.ndarray:
    try:
        meta = json.loads(Path(dataset_json).read_text())
        attrs = meta["attributes"]
    except (OSError, ValueError, KeyError):
        raise SemanticsError(f"{dataset_json}: no 'attributes' (semantics 'miniworld' needs a rendered MiniWorld "
                             "dataset)") from None
    keys = sorted({k for v in attrs.values() for k in v})
    values = {k: sorted({v[k] for v in attrs.values()}) for k in keys}
    out = np.zeros((len(classes), sum(len(v) for v in values.values())), np.float32)
    for i, c in enumerate(classes):
        if c not in attrs:
            raise SemanticsError(f"{dataset_json}: class {c!r} has no attributes")
        off = 0
        for k in keys:
            out[i, off + values[k].index(attrs[c][k])] = 1.0
            off += len(values[k])
    return out
