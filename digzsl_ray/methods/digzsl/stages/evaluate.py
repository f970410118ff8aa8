"""Stage 6: evaluate every variant -> ``OUT/metrics.json`` and ``OUT/evaluation.json``.

Variants (the ablation): ``clip_zero_shot`` (the floor: the frozen CLIP tower's features against the
run's prototypes, no training at all; features cached in ``OUT/features/``), ``no_synthetic`` (the
CDM alone, zero-shot through the prototypes),
``plain_prompt`` (classifier trained with plain-prompt images) and ``dct`` (with DCT images, the
method; its figures are also the top-level keys). Calibration lambda comes from validation data
only: held-out seen images (the val split) and held-out synthetic images; test images are scored
once with the chosen lambda. The CDM and the frozen CLIP have no synthetic data of their own, so they
are calibrated on the DCT run's held-out synthetic images (its own file OUT/cdm/metrics.json reports it uncalibrated).

Synthetic images are easier than real ones, so a lambda chosen on them is too small for real unseen
images. The second calibration, ``valclass``, rests on real images only: the CDM stage trains a
second head without the validation classes V and scores V's real images as pseudo-unseen; lambda is
chosen there (validation-class protocol of xlsa17). The CDM gets that lambda; a classifier gets its
synthetic lambda shifted by the same amount the CDM's lambda moved (synthetic -> valclass), since
no real image of an unseen class exists to calibrate it. ``evaluate.calibration`` picks the
headline; metrics.json ``calibrations`` holds both for every variant.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.errors import MissingInputError
from digzsl_ray.generation import is_validation_row, read_manifest
from digzsl_ray.io import write_json
from digzsl_ray.methods.digzsl.variants import CLIP_ZERO_SHOT, DCT, NO_SYNTHETIC, PLAIN_PROMPT
from digzsl_ray.metrics.zsl import calibration_summary, format_headline, full_report, headline_metrics
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing, write_metrics

log = logging.getLogger("digzsl")

def _split_val(scores: np.ndarray, labels: np.ndarray, seen: list[int]):
    is_seen = np.isin(labels, seen)
    return scores[is_seen], labels[is_seen], scores[~is_seen], labels[~is_seen]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def heldout_synthetic(ctx) -> tuple[list[bytes], np.ndarray]:
    """PNG bytes and labels of the held-out DCT images (the unseen validation data of the variants
    that have no synthetic set of their own: the CDM and the frozen CLIP)."""
    import pyarrow.parquet as pq

    d = ctx.path(f"generate:{DCT}")
    manifest = read_manifest(d)
    if manifest is None:
        raise MissingInputError(f"{d}/_manifest.json: missing; run `digzsl generate` before `digzsl evaluate`")
    pngs, labels = [], []
    for f in manifest["shards"]:
        t = pq.read_table(d / f, columns=["png", "label", "seed"]).to_pydict()
        for png, label, seed in zip(t["png"], t["label"], t["seed"]):
            if is_validation_row(seed, ctx.cfg.classifier.synthetic_val_fraction):
                pngs.append(png)
                labels.append(label)
    return pngs, np.asarray(labels, dtype=np.int64)


def cdm_synthetic_val_scores(ctx, held=None) -> tuple[np.ndarray, np.ndarray]:
    """CDM logits of the held-out DCT images (the no-synthetic baseline's unseen validation data)."""
    import torch

    from digzsl_ray.methods.digzsl.cdm import load_cdm
    from digzsl_ray.images import decode_png_bytes
    from digzsl_ray.models.presets import pick_device

    pngs, labels = held if held is not None else heldout_synthetic(ctx)
    device = pick_device(ctx.cfg.models.device)
    cdm = load_cdm(ctx.require("train-cdm:dir"), device)
    if not pngs:  # no held-out synthetic rows (synthetic_val_fraction 0, or very few images)
        return np.zeros((0, len(cdm.meta["class_names"]))), np.zeros(0, dtype=np.int64)
    scores = []
    for i in range(0, len(pngs), 256):
        x = decode_png_bytes(pngs[i : i + 256], cdm.image_size).float().div(255).to(device)
        with torch.no_grad():
            scores.append(cdm(x).float().cpu().numpy())
    return np.concatenate(scores), labels


CALIBRATIONS = ("synthetic", "valclass")


def valclass_lambda(s, seen: list[int], unseen: list[int], grid: np.ndarray) -> tuple[float, dict] | None:
    """lambda of the validation-class protocol, from the CDM stage's second head (trained without the
    validation classes V): real val images of seen classes outside V against real images of V as
    pseudo-unseen. ``None`` when the scores file has no such arrays (a run of an older version)."""
    from digzsl_ray.metrics.zsl import choose_lambda

    if ("valclass_classes" not in s.files or not len(s["valclass_unseen_labels"])
            or not len(s["valclass_seen_labels"])):
        return None
    v = [int(c) for c in s["valclass_classes"]]
    pseudo_seen = [c for c in seen if c not in set(v)]
    # candidates: V and the real unseen classes (the second head knows neither from images), as at test time
    return choose_lambda(_softmax(s["valclass_seen_scores"]), s["valclass_seen_labels"],
                         _softmax(s["valclass_unseen_scores"]), s["valclass_unseen_labels"],
                         pseudo_seen, sorted(set(unseen) | set(v)), grid)


def evaluate_variants(ctx) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every variant's full report (ZSL, calibrated GZSL, AUSUC, per class, confusion) under the
    configured calibration, and every variant's figures under each calibration."""
    cfg, split = ctx.cfg, ctx.split
    grid = np.linspace(0.0, cfg.evaluate.lambda_max, cfg.evaluate.lambda_grid)
    seen, unseen = list(split.seen), list(split.unseen)
    by_cal: dict[str, dict[str, dict]] = {c: {} for c in CALIBRATIONS}

    # 0. clip_zero_shot: the floor, the frozen CLIP with the run's prototypes and no training. Its lambda
    #    comes from the same validation data as the CDM's: real seen val images + held-out DCT images
    #    (synthetic), or real images of the validation classes, which a zero-shot model has never seen
    #    any more than the unseen ones (valclass).
    from digzsl_ray.features import clip_zero_shot_arrays, clip_zero_shot_reports

    held = heldout_synthetic(ctx)
    z = clip_zero_shot_arrays(cfg, split, ctx.rd.root, ctx.require("prototypes:prototypes"), held)
    for cal, r in clip_zero_shot_reports(z, seen, unseen, grid).items():
        by_cal[cal][CLIP_ZERO_SHOT] = r

    # 1. no_synthetic: the CDM (temperature-scaled cosine logits -> probabilities).
    s = np.load(ctx.require("train-cdm:scores"))
    syn_scores, syn_labels = cdm_synthetic_val_scores(ctx, held)
    v = s["val_scores"][np.isin(s["val_labels"], seen)], s["val_labels"][np.isin(s["val_labels"], seen)]
    cdm_arrays = (_softmax(s["test_seen_scores"]), s["test_seen_labels"], _softmax(s["test_unseen_scores"]),
                  s["test_unseen_labels"], _softmax(v[0]), v[1], _softmax(syn_scores), syn_labels, seen, unseen, grid)
    by_cal["synthetic"][NO_SYNTHETIC] = full_report(*cdm_arrays)
    by_cal["synthetic"][NO_SYNTHETIC]["validation"]["data"] = ("held-out DCT images (synthetic unseen) + real "
                                                               "seen val images")
    vc = valclass_lambda(s, seen, unseen, grid)
    # the synthetic-vs-real shift of lambda, measured on the CDM (validation data only): applied to the
    # classifiers, whose only unseen validation images are synthetic
    shift = None
    if vc is not None:
        r = full_report(*cdm_arrays, lam=vc[0])
        r["validation"] = {"gzsl_U": vc[1]["U"], "gzsl_S": vc[1]["S"], "gzsl_H": vc[1]["H"],
                           "data": "real: val images of seen classes outside V, trainval images of V"}
        by_cal["valclass"][NO_SYNTHETIC] = r
        shift = vc[0] - by_cal["synthetic"][NO_SYNTHETIC]["calibration_lambda"]

    # 2. Classifiers trained with synthetic images.
    for variant in (PLAIN_PROMPT, DCT):
        path = ctx.path(f"train-classifier:{variant}_scores")
        if not path.is_file():
            continue
        c = np.load(path)
        vs, vys, vu, vyu = _split_val(c["val_scores"], c["val_labels"], seen)
        arrays = (c["test_seen_scores"], c["test_seen_labels"], c["test_unseen_scores"], c["test_unseen_labels"],
                  vs, vys, vu, vyu, seen, unseen, grid)
        by_cal["synthetic"][variant] = full_report(*arrays)
        by_cal["synthetic"][variant]["validation"]["data"] = "synthetic held-out unseen + real seen val images"
        if shift is not None:
            lam = float(np.clip(by_cal["synthetic"][variant]["calibration_lambda"] + shift, 0.0,
                                cfg.evaluate.lambda_max))
            r = full_report(*arrays, lam=lam)
            r["validation"]["data"] = ("synthetic held-out unseen + real seen val images, at the synthetic "
                                       "lambda shifted by the CDM's synthetic -> valclass move")
            by_cal["valclass"][variant] = r
    chosen = cfg.evaluate.calibration
    if not by_cal[chosen]:
        log.warning("evaluate: calibration %r needs the validation-class scores of the CDM stage (rerun "
                    "`digzsl train-cdm`); reporting 'synthetic'", chosen)
        chosen = "synthetic"
    summary = {name: {cal: calibration_summary(by_cal[cal][name]) for cal in CALIBRATIONS if name in by_cal[cal]}
               for name in by_cal["synthetic"]}
    for name in summary:
        summary[name]["headline"] = chosen
    return by_cal[chosen], summary


class EvaluateStage(Stage):
    name = "evaluate"
    help = ("ZSL top-1, GZSL U/S/H (calibrated on validation data), AUSUC -> OUT/metrics.json, "
            "OUT/evaluation.json, OUT/report.html")
    writes = {"evaluation": "evaluation.json", "metrics": "metrics.json", "report": "report.html"}
    reads = ("train-cdm:scores",)
    needs_ray = False

    def complete(self, ctx) -> bool:
        return False  # seconds of work, and it reassembles metrics.json: always redone

    def run(self, ctx) -> dict:
        """Evaluate every variant, write evaluation.json and metrics.json, build the report."""
        t0 = time.time()
        split = ctx.split
        reports, calibrations = evaluate_variants(ctx)
        metrics = headline_metrics(reports, main=DCT if DCT in reports else NO_SYNTHETIC,
                                   n_unseen=len(split.unseen), n_seen=len(split.seen))
        metrics["calibration"] = next(iter(calibrations.values()))["headline"]
        metrics["calibrations"] = calibrations
        details = {name: {**{k: v for k, v in r.items() if k not in ("per_class_gzsl", "per_class_zsl")},
                          "per_class_gzsl": {split.classes[i]: a for i, a in r["per_class_gzsl"].items()},
                          "per_class_zsl": {split.classes[i]: a for i, a in r["per_class_zsl"].items()}}
                   for name, r in reports.items()}
        write_json(ctx.path("evaluate:evaluation"), {"classes": split.classes, "seen": list(split.seen),
                                                     "unseen": list(split.unseen), "variants": details,
                                                     "metrics": metrics})
        stage_timing(ctx.rd, "evaluate", time.time() - t0)
        metrics = write_metrics(ctx.rd)
        if not ctx.state.get("pipeline"):  # `digzsl run` builds the report once its memory figures are in
            ctx.method.report(ctx)
        return metrics

    def describe(self, ctx, metrics) -> str:
        return (format_headline(metrics, ctx.method.variants) + f"\nmetrics: {ctx.path('evaluate:metrics')}"
                f"\nreport:  {ctx.path('evaluate:report')}")
