"""ZSL and GZSL metrics (plain numpy; all accuracies in percent).

* ZSL top-1: argmax over unseen classes only, mean of per-class accuracies over unseen classes.
* GZSL (Xian et al. protocol): argmax over all classes after calibrated stacking (Chao et al. 2016):
  ``s'_c = s_c - lambda * [c is seen]``; U = per-class mean accuracy on test_unseen, S = on
  test_seen, H = 2US / (U + S).
* lambda is chosen on *validation* data (held-out seen images + held-out unseen proxies), never on
  test data: :func:`choose_lambda`.
* AUSUC: area under the seen-unseen accuracy curve traced by sweeping lambda over all of R
  (Chao et al. 2016), computed exactly from the breakpoints.
"""

from __future__ import annotations

import numpy as np


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes) -> np.ndarray:
    """Accuracy (percent) of each class in ``classes`` over the samples whose label is that class.

    Classes without samples get NaN (they are left out of means).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = np.full(len(classes), np.nan)
    for j, c in enumerate(classes):
        m = y_true == c
        if m.any():
            out[j] = (y_pred[m] == c).mean() * 100.0
    return out


def mean_per_class_accuracy(y_true, y_pred, classes) -> float:
    acc = per_class_accuracy(y_true, y_pred, classes)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0


def harmonic(u: float, s: float) -> float:
    return 0.0 if u + s == 0 else 2 * u * s / (u + s)


def zsl_top1(scores: np.ndarray, labels: np.ndarray, unseen: list[int]) -> float:
    """``scores [N, C]`` of test_unseen images; argmax restricted to ``unseen`` columns."""
    unseen = np.asarray(unseen)
    pred = unseen[np.argmax(scores[:, unseen], axis=1)]
    return mean_per_class_accuracy(labels, pred, unseen)


def calibrate(scores: np.ndarray, seen: list[int], lam: float) -> np.ndarray:
    """Calibrated stacking: subtract ``lam`` from the seen-class columns."""
    out = np.array(scores, dtype=np.float64, copy=True)
    out[:, seen] -= lam
    return out


def gzsl(scores_s: np.ndarray, labels_s: np.ndarray, scores_u: np.ndarray, labels_u: np.ndarray,
         seen: list[int], unseen: list[int], lam: float = 0.0) -> dict:
    """U, S, H (percent) with calibration ``lam``; predictions over all classes."""
    ps = np.argmax(calibrate(scores_s, seen, lam), axis=1)
    pu = np.argmax(calibrate(scores_u, seen, lam), axis=1)
    s = mean_per_class_accuracy(labels_s, ps, seen)
    u = mean_per_class_accuracy(labels_u, pu, unseen)
    return {"U": u, "S": s, "H": harmonic(u, s)}


def choose_lambda(scores_s: np.ndarray, labels_s: np.ndarray, scores_u: np.ndarray, labels_u: np.ndarray,
                  seen: list[int], unseen: list[int], grid: np.ndarray) -> tuple[float, dict]:
    """The lambda of ``grid`` with the best H on *validation* scores; ties go to the smallest |lambda|."""
    best_lam, best = 0.0, None
    for lam in sorted(grid, key=abs):
        r = gzsl(scores_s, labels_s, scores_u, labels_u, seen, unseen, float(lam))
        if best is None or r["H"] > best["H"] + 1e-12:
            best_lam, best = float(lam), r
    return best_lam, best


def _group_gap(scores: np.ndarray, seen: list[int], unseen: list[int]):
    """Per sample: gap = max seen score - max unseen score, and the argmax class within each group."""
    seen, unseen = np.asarray(seen), np.asarray(unseen)
    s_idx = seen[np.argmax(scores[:, seen], axis=1)]
    u_idx = unseen[np.argmax(scores[:, unseen], axis=1)]
    gap = scores[np.arange(len(scores)), s_idx] - scores[np.arange(len(scores)), u_idx]
    return gap, s_idx, u_idx


def seen_unseen_curve(scores_s, labels_s, scores_u, labels_u, seen, unseen) -> tuple[np.ndarray, np.ndarray]:
    """(U, S) in percent at every breakpoint of lambda, U increasing, from (0, S_max) to (U_max, 0).

    With calibration lambda a sample is predicted unseen iff ``lambda > gap``; it is then correct iff
    its best unseen class is its label (and, if predicted seen, iff its best seen class is).
    """
    scores = np.concatenate([scores_s, scores_u]).astype(np.float64)
    labels = np.concatenate([labels_s, labels_u])
    is_u = np.concatenate([np.zeros(len(labels_s), bool), np.ones(len(labels_u), bool)])
    gap, s_idx, u_idx = _group_gap(scores, seen, unseen)
    # per-class-mean weights: each sample counts 1 / (#samples of its class) / (#classes of its group)
    counts = {c: n for c, n in zip(*np.unique(labels, return_counts=True))}
    n_seen_cls = len({c for c in labels_s})
    n_unseen_cls = len({c for c in labels_u})
    w = np.array([1.0 / counts[c] for c in labels])
    w_u = np.where(is_u & (u_idx == labels), w / max(n_unseen_cls, 1), 0.0)  # gained when lambda > gap
    w_s = np.where(~is_u & (s_idx == labels), w / max(n_seen_cls, 1), 0.0)  # lost when lambda > gap
    order = np.argsort(gap, kind="stable")
    g = gap[order]
    cu = np.concatenate([[0.0], np.cumsum(w_u[order])])
    cs = np.concatenate([[0.0], np.cumsum(w_s[order])])
    # breakpoints: lambda just above each distinct gap value
    ends = np.concatenate([np.nonzero(np.diff(g))[0] + 1, [len(g)]]) if len(g) else np.array([0])
    u = np.concatenate([[0.0], cu[ends]]) * 100
    s = (cs[-1] - np.concatenate([[0.0], cs[ends]])) * 100
    return u, s


def ausuc(scores_s, labels_s, scores_u, labels_u, seen, unseen) -> float:
    """Area under the seen-unseen curve (percent^2 / 100, i.e. in [0, 100])."""
    u, s = seen_unseen_curve(scores_s, labels_s, scores_u, labels_u, seen, unseen)
    return float(np.trapezoid(s, u) / 100.0)


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def full_report(test_s, y_s, test_u, y_u, val_s, yv_s, val_u, yv_u, seen, unseen, grid,
                lam: float | None = None) -> dict:
    """Every metric of one model. ``*_s``/``*_u``: scores [N, C] (probabilities) and labels.

    lambda comes from the validation arrays only (or is given, chosen elsewhere on validation data);
    test arrays are scored once with it.
    """
    if lam is None:
        lam, val = choose_lambda(val_s, yv_s, val_u, yv_u, seen, unseen, grid)
    else:
        val = gzsl(val_s, yv_s, val_u, yv_u, seen, unseen, lam) if len(yv_s) and len(yv_u) else \
            {"U": float("nan"), "S": float("nan"), "H": float("nan")}
    g = gzsl(test_s, y_s, test_u, y_u, seen, unseen, lam)
    g0 = gzsl(test_s, y_s, test_u, y_u, seen, unseen, 0.0)
    num_classes = test_s.shape[1]
    pred_s = np.argmax(calibrate(test_s, seen, lam), 1)
    pred_u = np.argmax(calibrate(test_u, seen, lam), 1)
    acc_u = per_class_accuracy(y_u, pred_u, unseen)
    acc_s = per_class_accuracy(y_s, pred_s, seen)
    unseen_arr = np.asarray(unseen)
    zsl_pred = unseen_arr[np.argmax(test_u[:, unseen_arr], axis=1)]
    return {
        "zsl_top1": zsl_top1(test_u, y_u, unseen),
        "gzsl_U": g["U"], "gzsl_S": g["S"], "gzsl_H": g["H"],
        "calibration_lambda": lam,
        "uncalibrated": {"gzsl_U": g0["U"], "gzsl_S": g0["S"], "gzsl_H": g0["H"]},
        "validation": {"gzsl_U": val["U"], "gzsl_S": val["S"], "gzsl_H": val["H"]},
        "ausuc": ausuc(test_s, y_s, test_u, y_u, seen, unseen),
        "per_class_gzsl": {**{int(c): float(a) for c, a in zip(unseen, acc_u)},
                           **{int(c): float(a) for c, a in zip(seen, acc_s)}},
        "per_class_zsl": {int(c): float(a) for c, a in zip(unseen, per_class_accuracy(y_u, zsl_pred, unseen))},
        "confusion": confusion(np.concatenate([y_s, y_u]), np.concatenate([pred_s, pred_u]), num_classes).tolist(),
    }


HEADLINE = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H")


def calibration_summary(r: dict) -> dict:
    """The figures of one variant under one calibration: test metrics (AUSUC when the report has it)
    and the validation figures its lambda was chosen on (NaN -> JSON null)."""
    def num(x):
        return None if x is None or not np.isfinite(float(x)) else round(float(x), 3)

    keys = HEADLINE + (("ausuc",) if "ausuc" in r else ())
    return {"calibration_lambda": round(float(r["calibration_lambda"]), 4),
            **{k: round(float(r[k]), 3) for k in keys},
            "validation": {k: (x if isinstance(x, str) else num(x)) for k, x in r["validation"].items()}}


def headline_metrics(reports: dict[str, dict], main: str, n_unseen: int, n_seen: int) -> dict:
    """metrics.json's figures (README, "What a run writes") from the variants' full reports: the ``main``
    variant's at the top level, every variant under ``ablation``."""
    r = reports[main]
    metrics = {k: round(float(r[k]), 3) for k in HEADLINE}
    metrics["calibration_lambda"] = round(float(r["calibration_lambda"]), 4)
    metrics["ausuc"] = round(float(r["ausuc"]), 3)
    metrics["ablation"] = {name: {k: round(float(v[k]), 3) for k in HEADLINE} | {
        "calibration_lambda": round(float(v["calibration_lambda"]), 4), "ausuc": round(float(v["ausuc"]), 3)}
        for name, v in reports.items()}
    metrics["chance_zsl_top1"] = round(100.0 / n_unseen, 3)
    metrics["num_classes"] = {"seen": n_seen, "unseen": n_unseen}
    return metrics


FLOOR = "clip_zero_shot"


def format_headline(metrics: dict, variants: tuple[str, ...] | list[str]) -> str:
    """The results table `digzsl run` and `make demo` print, one row per variant in ``variants``; with
    the floor (``clip_zero_shot``, the frozen CLIP with the run's prototypes) in the ablation, a last
    column gives each variant's ZSL top-1 minus the floor's."""
    floor = metrics["ablation"].get(FLOOR)
    lines = [f"{'variant':<15}{'ZSL T1':>9}{'GZSL U':>9}{'GZSL S':>9}{'GZSL H':>9}{'lambda':>9}{'AUSUC':>9}"
             + (f"{'vs CLIP':>9}" if floor else "")]
    for name in variants:
        r = metrics["ablation"].get(name)
        if r:
            lines.append(f"{name:<15}{r['zsl_top1']:>9.1f}{r['gzsl_U']:>9.1f}{r['gzsl_S']:>9.1f}{r['gzsl_H']:>9.1f}"
                         f"{r['calibration_lambda']:>9.3f}{r['ausuc']:>9.1f}"
                         + (f"{r['zsl_top1'] - floor['zsl_top1']:>+9.1f}" if floor else ""))
    lines.append(f"(chance ZSL top-1: {metrics['chance_zsl_top1']:.1f}; accuracies in percent, "
                 f"mean of per-class accuracies; lambda chosen on validation data"
                 + (f", calibration {metrics['calibration']!r}" if metrics.get("calibration") else "")
                 + ("; vs CLIP: ZSL top-1 minus clip_zero_shot, the frozen CLIP with the run's prototypes and no "
                    "training" if floor else "") + ")")
    return "\n".join(lines)
