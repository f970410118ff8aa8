"""DIG-ZSL's curves, read back from the run directory: the one reader of the stages' histories, used by
the report's plots and by experiment tracking (:meth:`digzsl_ray.stages.contract.Stage.curves`)."""

from __future__ import annotations

from digzsl_ray.htmlreport import read_json_or_empty
from digzsl_ray.methods.digzsl.variants import SYNTHETIC
from digzsl_ray.tracking import Series, series_from_records, series_from_values


def cdm_curves(ctx) -> Series:
    """Per epoch: ``loss``, ``val_acc`` (seen validation accuracy, %)."""
    return series_from_records(read_json_or_empty(ctx.path("train-cdm:config")).get("history", []), "epoch")


def token_curves(ctx) -> Series:
    """Per update of each class's token: ``loss/<class>`` and ``cdm_acc/<class>``; the fresh-seed
    means of tokens/summary.json as one-point series ``fresh_seed/<measure>``."""
    out: Series = {}
    for e in sorted(read_json_or_empty(ctx.path("learn-tokens:index")).values(), key=lambda e: e["name"]):
        out.update(series_from_values(e.get("loss_curve"), f"loss/{e['name']}"))
        out.update(series_from_values(e.get("acc_curve"), f"cdm_acc/{e['name']}"))
    mean = read_json_or_empty(ctx.path("learn-tokens:summary")).get("mean") or {}
    out.update({f"fresh_seed/{k}": [(0, float(v))] for k, v in sorted(mean.items()) if isinstance(v, (int, float))})
    return out


def classifier_curves(ctx) -> Series:
    """Per epoch of each trained classifier: ``<variant>/loss``, ``<variant>/val_acc`` (epoch -1: the
    untrained head)."""
    out: Series = {}
    for variant in SYNTHETIC:
        config = read_json_or_empty(ctx.path(f"train-classifier:{variant}") / "config.json")
        out.update(series_from_records(config.get("history", []), "epoch", prefix=f"{variant}/"))
    return out
