"""ZeroDiff's curves, read back from the run directory: the one reader of the stages' histories, used by
the report's plots and by experiment tracking (:meth:`digzsl_ray.stages.contract.Stage.curves`)."""

from __future__ import annotations

from digzsl_ray.htmlreport import read_json_or_empty
from digzsl_ray.methods.zerodiff.folds import FOLDS
from digzsl_ray.tracking import Series, series_from_records, series_from_values

PHASES = ("drg", "dfg")  # the diffusion-based representation generator, then the feature generator


def representation_curves(ctx) -> Series:
    """Per epoch of each fold's contrastive representation: ``<fold>/loss``."""
    folds = read_json_or_empty(ctx.path("train-representation:meta")).get("folds") or {}
    out: Series = {}
    for fold in FOLDS:
        out.update(series_from_values((folds.get(fold) or {}).get("loss"), f"{fold}/loss"))
    return out


def generator_curves(ctx) -> Series:
    """Per epoch of each fold and phase: ``<fold>/<phase>/<key>`` (loss_d, loss_g, wasserstein,
    lambda_gp, gp, ml, seconds) and, where measured, ``<fold>/dfg/spurious/<measure>``."""
    out: Series = {}
    for fold in FOLDS:
        history = read_json_or_empty(ctx.path(f"train-generators:{fold}")).get("history", [])
        for phase in PHASES:
            out.update(series_from_records(history, "epoch", prefix=f"{fold}/{phase}/",
                                           where=lambda r, phase=phase: r.get("phase") == phase))
    return out
