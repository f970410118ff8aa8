"""Evaluation of ZeroDiff's variants (plain numpy/torch; the stage module wires files).

Variants: ``base`` (ZeroDiff: DRG -> DFG one-step features), ``diffgen`` (+ our DiffGen partial
features), ``difftta`` (our DiffTTA-adapted generator), ``full`` (ZeroDiff++: both). For each fold a
softmax classifier is trained on real seen + synthetic unseen features (10% of the synthetic rows
of each class held out as validation data) and scored every epoch.

Choices (classifier epoch, lambda), by ``evaluate.calibration``:
* ``valclass`` (default): on the validation fold, the epoch and lambda with the best GZSL H on the
  scoring half of its real data (held-out seen images of seen \\ V, real images of V; the other
  half is what its transductive variants may pseudo-label, :func:`validation_halves`); the final
  fold's classifier is read at that epoch with that lambda;
* ``synthetic``: on the final fold's held-out real seen + held-out synthetic unseen features.
* ``evaluate.select_on_test: true``: the reference protocol, best test H (labelled test-selected).
The transductive variants pseudo-label a fold's unlabelled test pool with its base classifier at
the chosen epoch and lambda.
"""

from __future__ import annotations

import numpy as np
import torch

from digzsl_ray.methods.zerodiff.classify import fit_softmax
from digzsl_ray.methods.zerodiff.transduct import diffgen, difftta
from digzsl_ray.metrics.zsl import choose_lambda

from digzsl_ray.methods.zerodiff.variants import BASE, DIFFGEN, DIFFTTA, FULL, VARIANTS  # noqa: F401


def _hold_out(y: np.ndarray, every: int = 10) -> np.ndarray:
    """Every ``every``-th synthetic row of each class (validation); the rest trains."""
    mask = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.where(y == c)[0]
        mask[rows[::every]] = True
    return mask


def validation_halves(y: dict, seed: int) -> dict:
    """The validation fold's test arrays split per class into two halves (seeded): ``pool`` (what the
    transductive variants may pseudo-label) and ``score`` (what every variant's choices are scored on).
    {"pool"|"score": {"test_seen"|"test_unseen": row indices}}."""
    rng = np.random.default_rng(seed + 50_021)
    out = {"pool": {}, "score": {}}
    for k in ("test_seen", "test_unseen"):
        pool, score = [], []
        for c in np.unique(y[k]):
            rows = rng.permutation(np.where(y[k] == c)[0])
            cut = len(rows) // 2
            pool.append(rows[:cut])
            score.append(rows[cut:])
        out["pool"][k] = np.sort(np.concatenate(pool)) if pool else np.zeros(0, np.int64)
        out["score"][k] = np.sort(np.concatenate(score)) if score else np.zeros(0, np.int64)
    return out


def _inputs(cfg, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.concatenate([x, r], 1) if cfg.softmax.input == "xr" else x


def synthetic_set(cfg, p, drg, dfg, variant: str, pseudo: tuple | None) -> tuple:
    """(features, labels, representations, info) of a variant's synthetic unseen set on fold ``p``:
    DRG -> DFG samples (from the DiffTTA-adapted DFG for difftta/full) plus, for diffgen/full, the
    DiffGen copies of the pseudo-labelled rows ``pseudo = (rows of [test_seen; test_unseen], labels)``."""
    from digzsl_ray.methods.zerodiff.models import generated_unseen

    t = cfg.transduct
    att = torch.from_numpy(p.att)
    gen_model, info = dfg, {}
    pool_x = np.concatenate([p.x["test_seen"], p.x["test_unseen"]])
    pool_r = np.concatenate([p.r["test_seen"], p.r["test_unseen"]])
    if variant in (DIFFTTA, FULL) and pseudo is not None and len(pseudo[0]):
        rows, labels = pseudo
        gen_model, curve = difftta(dfg, pool_x[rows], pool_r[rows], labels, att, t.tta_steps, t.tta_lr,
                                   t.tta_batch_size, cfg.synthetic.seed + 7)
        info["tta_loss"] = curve[:: max(1, len(curve) // 20)] + curve[-1:]
    sx, sy, sr = generated_unseen(drg, gen_model, att, p.fold.unseen, cfg.synthetic.per_class, cfg.synthetic.seed,
                                  cfg.synthetic.progressive, with_r=True)
    if variant in (DIFFGEN, FULL) and pseudo is not None and len(pseudo[0]):
        rows, labels = pseudo
        gx, gy, gr = diffgen(gen_model, drg, pool_x[rows], labels, att, min(t.diffgen_t_start, cfg.dfg.n_t - 1),
                             t.diffgen_copies, cfg.synthetic.seed + 11)
        sx, sy, sr = np.concatenate([sx, gx]), np.concatenate([sy, gy]), np.concatenate([sr, gr])
        info["diffgen_features"] = int(len(gy))
    info["synthetic_rows"] = int(len(sy))
    return sx, sy, sr, info


def fit_variant(cfg, p, drg, dfg, variant: str, pseudo: tuple | None, n_classes: int) -> dict:
    """Train one variant's GZSL classifier on fold ``p`` (real seen + synthetic unseen); every epoch's
    probabilities and weights."""
    sx, sy, sr, info = synthetic_set(cfg, p, drg, dfg, variant, pseudo)
    held = _hold_out(sy)
    x = np.concatenate([_inputs(cfg, p.x["train"], p.r["train"]), _inputs(cfg, sx[~held], sr[~held])])
    y = np.concatenate([p.y["train"], sy[~held]])
    evals = {k: _inputs(cfg, p.x[k], p.r[k]) for k in ("test_seen", "test_unseen", "heldout")}
    evals["syn_val"] = _inputs(cfg, sx[held], sr[held])
    columns = None if len(p.fold.seen) + len(p.fold.unseen) == n_classes else sorted(p.fold.seen + p.fold.unseen)
    probs, states = fit_softmax(x, y, n_classes, evals, cfg.softmax, cfg.softmax.seed, columns)
    return {"probs": probs, "states": states, "syn_val_labels": sy[held], "info": info}


def fit_zsl_variant(cfg, p, drg, dfg, variant: str, pseudo: tuple | None, n_classes: int) -> dict:
    """The reference's separate ZSL classifier: a softmax over the fold's unseen classes only, trained on
    the variant's synthetic unseen features alone; every epoch's probabilities of the fold's
    test_unseen rows (the other columns -inf)."""
    sx, sy, sr, info = synthetic_set(cfg, p, drg, dfg, variant, pseudo)
    probs, states = fit_softmax(_inputs(cfg, sx, sr), sy, n_classes,
                                {"test_unseen": _inputs(cfg, p.x["test_unseen"], p.r["test_unseen"])},
                                cfg.softmax, cfg.softmax.seed, sorted(p.fold.unseen))
    return {"probs": probs, "states": states, "info": info}


def select_zsl(fit: dict, p, rows: np.ndarray | None = None) -> dict:
    """The epoch with the best ZSL top-1 (mean per-class accuracy over the unseen classes) on the fold's
    test_unseen rows ``rows`` (all when None)."""
    from digzsl_ray.metrics.zsl import zsl_top1

    ru = rows if rows is not None else slice(None)
    best = None
    for e, pr in enumerate(fit["probs"]):
        acc = zsl_top1(pr["test_unseen"][ru], p.y["test_unseen"][ru], p.fold.unseen)
        if best is None or acc > best["zsl_top1"]:
            best = {"epoch": e, "zsl_top1": float(acc)}
    return best


def select(fit: dict, p, grid: np.ndarray, on: str, rows: dict | None = None) -> dict:
    """The epoch and lambda with the best GZSL H on ``on``: 'fold' (the fold's own test arrays: the
    validation fold's real data, or the final fold's TEST data for select_on_test) or 'synthetic'
    (held-out real seen + held-out synthetic unseen). ``rows``: {"test_seen"|"test_unseen": indices}
    scored on 'fold' (the validation fold's scoring half), all when None."""
    best = None
    seen, unseen = p.fold.seen, p.fold.unseen
    rs = rows["test_seen"] if rows else slice(None)
    ru = rows["test_unseen"] if rows else slice(None)
    for e, pr in enumerate(fit["probs"]):
        if on == "synthetic":
            args = (pr["heldout"], p.y["heldout"], pr["syn_val"], fit["syn_val_labels"])
        else:
            args = (pr["test_seen"][rs], p.y["test_seen"][rs], pr["test_unseen"][ru], p.y["test_unseen"][ru])
        lam, g = choose_lambda(*args, seen, unseen, grid)
        if best is None or g["H"] > best["H"]:
            best = {"epoch": e, "lambda": float(lam), "U": g["U"], "S": g["S"], "H": g["H"]}
    return best
