"""The two folds every ZeroDiff run trains and evaluates, as arrays.

* ``val`` (model selection): the validation classes V (xlsa17 ``valclassesK``, MiniWorld's list,
  else a seeded draw; :func:`digzsl_ray.data.split.validation_classes`) play unseen. Its SC
  representation and generators are trained on the training images of seen \\ V only; its
  "test" set is the held-out val images of seen \\ V and every trainval image of V. The
  classifier epoch, lambda and every variant's figures used for choices come from here.
* ``final``: all seen classes for training (trainval minus the val images), the real test splits.

Scarce data (``features.train_fraction`` / ``features.train_split_file``) thins the training rows of
both folds; held-out and test rows are never thinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digzsl_ray.data.split import validation_classes

FOLDS = ("val", "final")
SPLIT_NAMES = ("trainval", "test_seen", "test_unseen")


@dataclass
class Fold:
    name: str
    seen: list[int]
    unseen: list[int]
    x: dict  # "train" | "heldout" | "test_seen" | "test_unseen" -> raw features [N, D]
    y: dict  # same keys -> labels [N]


def train_mask(cfg, split, labels: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Which trainval rows train (not held out as val; thinned by the scarce-data settings)."""
    f = cfg.features
    keep = ~held
    if f.train_split_file:
        keep &= scarce_file_mask(cfg, f.train_split_file, len(labels))
    if f.train_fraction < 1.0:
        rng = np.random.default_rng(np.random.SeedSequence([f.fraction_seed, 31]))
        thin = np.zeros(len(labels), bool)
        for c in np.unique(labels[keep]):
            rows = np.where(keep & (labels == c))[0]
            k = max(1, int(round(f.train_fraction * len(rows))))
            thin[rng.choice(rows, size=k, replace=False)] = True
        keep &= thin
    return keep


def scarce_file_mask(cfg, path: str, n: int) -> np.ndarray:
    """Rows of trainval kept by the reference's split_{10,30}percent.mat (its ``trainval_loc``, 1-based
    indices into the same image list as att_splits.mat's)."""
    from digzsl_ray.data.xlsa17 import Xlsa17Error, _load_mat

    full = _load_mat(Path(cfg.data.splits_dir) / "att_splits.mat", "att_splits.mat", ["trainval_loc"])
    sub = _load_mat(Path(path).expanduser(), "split_10percent.mat / split_30percent.mat", ["trainval_loc"])
    if "trainval_loc" not in sub:
        raise Xlsa17Error(f"{path}: missing field 'trainval_loc'")
    locs = np.asarray(full["trainval_loc"]).ravel()
    if len(locs) != n:
        raise Xlsa17Error(f"{cfg.data.splits_dir}/att_splits.mat: trainval_loc has {len(locs)} entries, the split {n}")
    keep = set(np.asarray(sub["trainval_loc"]).ravel().tolist())
    if not keep <= set(locs.tolist()):
        raise Xlsa17Error(f"{path}: trainval_loc holds indices outside att_splits.mat's trainval_loc")
    return np.isin(locs, list(keep))


def fold_plan(cfg, split, labels_trainval: np.ndarray) -> dict:
    """What decides the folds, as plain values (sent to Ray Train workers): the held-out (val) and
    training rows of trainval, the seen and unseen classes and the validation classes V."""
    held_paths = {it.path for it in split.val}
    held = np.array([it.path in held_paths for it in split.items["trainval"]], bool)
    train = train_mask(cfg, split, np.asarray(labels_trainval), held)
    return {"held": held.tolist(), "train": train.tolist(), "seen": list(split.seen), "unseen": list(split.unseen),
            "val_classes": validation_classes(split, cfg.data.val_seed)}


def folds_from(feats: dict[str, tuple[np.ndarray, np.ndarray]], plan: dict) -> dict[str, Fold]:
    """``feats[split] = (features, labels)`` in split order (trainval, test_seen, test_unseen)."""
    xtv, ytv = feats["trainval"]
    held, train = np.asarray(plan["held"], bool), np.asarray(plan["train"], bool)
    seen, unseen, v = list(plan["seen"]), list(plan["unseen"]), list(plan["val_classes"])
    out = {"final": Fold("final", seen, unseen,
                         {"train": xtv[train], "heldout": xtv[held], "test_seen": feats["test_seen"][0],
                          "test_unseen": feats["test_unseen"][0]},
                         {"train": ytv[train], "heldout": ytv[held], "test_seen": feats["test_seen"][1],
                          "test_unseen": feats["test_unseen"][1]})}
    s2 = [c for c in seen if c not in set(v)]
    in_v = np.isin(ytv, v)
    tr2, ho2 = train & ~in_v, held & ~in_v
    out["val"] = Fold("val", s2, v,
                      {"train": xtv[tr2], "heldout": xtv[ho2], "test_seen": xtv[ho2], "test_unseen": xtv[in_v]},
                      {"train": ytv[tr2], "heldout": ytv[ho2], "test_seen": ytv[ho2], "test_unseen": ytv[in_v]})
    return out


def build_folds(cfg, split, feats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Fold]:
    return folds_from(feats, fold_plan(cfg, split, feats["trainval"][1]))


@dataclass
class Prepared:
    """A fold ready for the generators: MinMax-scaled features x and representations r (both fit on
    the fold's training rows), labels, and the class semantics ``att`` [C, A]."""

    fold: Fold
    x: dict
    r: dict
    y: dict
    att: np.ndarray
    x_scale: dict
    r_scale: dict


def prepare(fold: Fold, net, att: np.ndarray) -> Prepared:
    """Scale x, compute r with the fold's representation ``net`` and scale it (fit on train)."""
    import torch

    from digzsl_ray.methods.zerodiff.represent import MinMax

    xs = MinMax(fold.x["train"])
    with torch.no_grad():
        raw_r = {k: net(torch.from_numpy(np.ascontiguousarray(v, np.float32))).numpy() if len(v)
                 else np.zeros((0, net.encoder[-2].out_features), np.float32) for k, v in fold.x.items()}
    rs = MinMax(raw_r["train"])
    return Prepared(fold, {k: xs(v) for k, v in fold.x.items()}, {k: rs(v) for k, v in raw_r.items()},
                    dict(fold.y), att, xs.state(), rs.state())
