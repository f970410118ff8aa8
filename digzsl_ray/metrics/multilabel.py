"""Multi-label zero-shot metrics: per-class mAP and overall top-k P/R/F1 (plain numpy, percent).

The peers' codebases compute "the same" metrics in four different ways; each is a switch of
:class:`Protocol`, and each peer's semantics is a named preset (:data:`PRESETS`):

* ``coding``: ``"01"`` (1 = positive, anything else negative) or ``"pm1"`` (+1 positive, -1 negative,
  0 = not annotated, left out of that class's AP and out of the recall denominator).
* ``drop_unlabelled``: ``"none"`` (every image counts), ``"f1"`` (images without a positive label
  among the evaluated columns are left out of P/R/F1 only: SDL's ``relevant_inds``) or ``"all"``
  (left out of AP as well).
* ``empty_class``: a class without a positive image counts as AP 0 inside the mean (``"zero"``: all
  four peers) or is left out of the mean (``"skip"``).
* ``ties``: ``"index"`` ranks tied scores by position (lower image index first for AP, lower class
  index first for top-k; deterministic, where the peers' unstable sorts are arbitrary) and computes
  non-interpolated AP ``sum_{positives} precision@rank / #positives``; ``"grouped"`` makes tied
  scores one threshold, as ``sklearn.metrics.average_precision_score`` does (LESA). Top-k always
  breaks ties by class index.

Overall top-k (all peers): each image predicts its k highest-scoring columns; P = TP / (N * k),
R = TP / #positive labels, F1 = 2PR / (P + R) (0 when P or R is 0). With ``k > C`` every column is
predicted (P's denominator is then N * C).

ZSL scores the unseen columns only; GZSL all columns (:func:`zsl_gzsl`).
Sources: docs/DESIGN.md section 9 and ../shared/reference/multilabel-and-zerodiff*.md section C / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Protocol:
    coding: Literal["01", "pm1"] = "01"
    drop_unlabelled: Literal["none", "f1", "all"] = "none"
    empty_class: Literal["zero", "skip"] = "zero"
    ties: Literal["index", "grouped"] = "index"

    def __post_init__(self) -> None:
        for field, allowed in (("coding", ("01", "pm1")), ("drop_unlabelled", ("none", "f1", "all")),
                               ("empty_class", ("zero", "skip")), ("ties", ("index", "grouped"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"metric protocol: {field}={getattr(self, field)!r}; allowed: {', '.join(allowed)}")


PRESETS: dict[str, Protocol] = {
    # DualCoOp / Diff-ZS-MLC utils/helper.py: 0/1 labels, AP over all images, empty class -> 0.
    "dualcoop": Protocol(coding="01", drop_unlabelled="none", empty_class="zero", ties="index"),
    # BiAM util_nus.py: +-1 with 0 masked, own non-interpolated AP, empty class -> 0 in the mean.
    "biam": Protocol(coding="pm1", drop_unlabelled="none", empty_class="zero", ties="index"),
    # LESA core/utils.py: +-1 with 0 masked, sklearn's AP (tied scores grouped), empty class -> 0.
    "lesa": Protocol(coding="pm1", drop_unlabelled="none", empty_class="zero", ties="grouped"),
    # SDL helper_functions.py: 0/1 labels, calc_F1 over images with a relevant label only.
    "sdl": Protocol(coding="01", drop_unlabelled="f1", empty_class="zero", ties="index"),
}



def multi_hot(label_lists, n: int) -> np.ndarray:
    """``[N, n]`` float32 0/1 targets from lists of label indices."""
    y = np.zeros((len(label_lists), n), dtype=np.float32)
    for i, ls in enumerate(label_lists):
        y[i, list(ls)] = 1.0
    return y

def protocol(preset: str | Protocol | dict | None = None, **overrides) -> Protocol:
    """A preset by name (default ``dualcoop``), a Protocol, or a dict of switches; ``overrides`` win."""
    if isinstance(preset, Protocol):
        base = preset
    elif isinstance(preset, dict):
        base = Protocol(**preset)
    else:
        name = preset or "dualcoop"
        if name not in PRESETS:
            raise ValueError(f"unknown multi-label metric preset {name!r}; known: {', '.join(PRESETS)}")
        base = PRESETS[name]
    return Protocol(**{**asdict(base), **overrides}) if overrides else base


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N images, C classes]")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, labels


def _pos_neg(labels: np.ndarray, coding: str) -> tuple[np.ndarray, np.ndarray]:
    """(positive mask, annotated mask)."""
    if coding == "pm1":
        bad = ~np.isin(labels, (-1, 0, 1))
        if bad.any():
            raise ValueError(f"coding 'pm1' takes labels in {{-1, 0, 1}}; found {labels[bad].flat[0]!r}")
        return labels == 1, labels != 0
    return labels == 1, np.ones(labels.shape, dtype=bool)


def _ap_index(s: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-s, kind="stable")
    hits = y[order].astype(np.float64)
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((prec * hits).sum() / hits.sum())


def _ap_grouped(s: np.ndarray, y: np.ndarray) -> float:
    # sklearn's step AP: sum over distinct thresholds of (R_n - R_{n-1}) * P_n.
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    prec = tp / (last + 1)
    rec = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def average_precision(scores: np.ndarray, labels: np.ndarray, proto: Protocol | str | None = None) -> np.ndarray:
    """Per-class AP in percent, ``[C]``; NaN for a class without positives when ``empty_class='skip'``."""
    p = protocol(proto)
    scores, labels = _check(scores, labels)
    pos, annotated = _pos_neg(labels, p.coding)
    keep = pos.any(1) if p.drop_unlabelled == "all" else np.ones(len(labels), dtype=bool)
    ap_fn = _ap_grouped if p.ties == "grouped" else _ap_index
    out = np.empty(scores.shape[1])
    for c in range(scores.shape[1]):
        m = keep & annotated[:, c]
        y = pos[m, c]
        out[c] = ap_fn(scores[m, c], y) * 100.0 if y.any() else (0.0 if p.empty_class == "zero" else np.nan)
    return out


def mean_ap(scores: np.ndarray, labels: np.ndarray, proto: Protocol | str | None = None) -> float:
    ap = average_precision(scores, labels, proto)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def top_k(scores: np.ndarray, labels: np.ndarray, k: int, proto: Protocol | str | None = None) -> dict:
    """Overall top-k precision, recall and F1 (percent): ``{"P": .., "R": .., "F1": ..}``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    p = protocol(proto)
    scores, labels = _check(scores, labels)
    pos, _ = _pos_neg(labels, p.coding)
    if p.drop_unlabelled in ("f1", "all"):
        keep = pos.any(1)
        scores, pos = scores[keep], pos[keep]
    n, c = scores.shape
    kk = min(k, c)
    # Stable sort on -score: tied scores keep class order (lower index predicted first).
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    tp = float(np.take_along_axis(pos, top, axis=1).sum())
    npred, npos = n * kk, float(pos.sum())
    prec = 100.0 * tp / npred if npred else 0.0
    rec = 100.0 * tp / npos if npos else 0.0
    f1 = 0.0 if prec == 0 or rec == 0 else 2 * prec * rec / (prec + rec)
    return {"P": prec, "R": rec, "F1": f1}


def report(scores: np.ndarray, labels: np.ndarray, proto: Protocol | str | None = None,
           ks: tuple[int, ...] = (3, 5), prefix: str = "") -> dict:
    """``{prefix+"mAP", prefix+"F1@k", prefix+"P@k", prefix+"R@k"}`` for every k."""
    out = {f"{prefix}mAP": mean_ap(scores, labels, proto)}
    for k in ks:
        r = top_k(scores, labels, k, proto)
        out.update({f"{prefix}F1@{k}": r["F1"], f"{prefix}P@{k}": r["P"], f"{prefix}R@{k}": r["R"]})
    return out


def zsl_gzsl(scores: np.ndarray, labels: np.ndarray, unseen: list[int], proto: Protocol | str | None = None,
             ks: tuple[int, ...] = (3, 5), scores_gzsl: np.ndarray | None = None,
             labels_gzsl: np.ndarray | None = None) -> dict:
    """ZSL metrics (unseen columns of ``scores``/``labels``) and GZSL metrics (all columns).

    ``scores``/``labels`` are ``[N, C]`` over all classes. The GZSL test set may be another image set
    (COCO's 65-class test JSON); pass it as ``scores_gzsl``/``labels_gzsl``. Keys: ``zsl_mAP``,
    ``zsl_F1@3``, ..., ``gzsl_mAP``, ``gzsl_F1@3``, ... (the metrics.json contract).
    """
    unseen = list(unseen)
    scores, labels = _check(scores, labels)
    out = report(scores[:, unseen], labels[:, unseen], proto, ks, "zsl_")
    sg = scores if scores_gzsl is None else scores_gzsl
    lg = labels if labels_gzsl is None else labels_gzsl
    out.update(report(sg, lg, proto, ks, "gzsl_"))
    return out


def format_headline(metrics: dict, variants) -> str:
    """The results table `digzsl run` prints for a multi-label run, one row per variant."""
    cols = ("zsl_mAP", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_F1@3", "gzsl_F1@5")
    floor = metrics.get("ablation", {}).get("clip_zero_shot")  # the frozen CLIP, when the run reports it
    lines = [f"{'variant':<16}" + "".join(f"{c:>11}" for c in cols) + (f"{'vs CLIP':>9}" if floor else "")]
    for name in variants:
        r = metrics.get("ablation", {}).get(name)
        if r:
            lines.append(f"{name:<16}" + "".join(f"{r[c]:>11.1f}" for c in cols)
                         + (f"{r['zsl_mAP'] - floor['zsl_mAP']:>+9.1f}" if floor else ""))
    lines.append(f"(percent; metric preset {metrics.get('metric_preset')!r}; main variant {metrics.get('variant')!r}, "
                 f"served threshold {metrics.get('threshold')} chosen on validation data)")
    return "\n".join(lines)


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test of two paired 0/1 outcomes (the same rows judged twice): the discordant
    counts and the two-sided binomial p-value of ``a_only`` against ``b_only`` under p = 1/2."""
    from math import comb

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    k = min(a_only, b_only)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"rows": int(len(a)), "both": int((a & b).sum()), "neither": int((~a & ~b).sum()), "a_only": a_only,
            "b_only": b_only, "p_value": round(p, 6)}

