"""The multi-label method's curves, read back from the run directory: the one reader of the stages'
histories, used by the report's plots and by experiment tracking
(:meth:`digzsl_ray.stages.contract.Stage.curves`)."""

from __future__ import annotations

from digzsl_ray.htmlreport import read_json_or_empty
from digzsl_ray.methods.multilabel.variants import VARIANTS
from digzsl_ray.tracking import Series, series_from_records


def tuning_curves(ctx) -> Series:
    """Per step of the text-encoder tuning: ``loss``, ``skipped``, ``val_acceptance`` (%), ``val_target_prob``."""
    return series_from_records(read_json_or_empty(ctx.path("tune-text-encoder:summary")).get("history", []), "step")


def classifier_curves(ctx) -> Series:
    """Per epoch of each trained classifier: ``<variant>/<key>`` (loss_real, selection = held-out real
    seen mAP, val_seen_mAP, ...)."""
    out: Series = {}
    for v in VARIANTS:
        config = read_json_or_empty(ctx.path(f"train-classifier:{v}") / "config.json")
        out.update(series_from_records(config.get("history", []), "epoch", prefix=f"{v}/"))
    return out
