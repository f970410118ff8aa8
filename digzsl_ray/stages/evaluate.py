"""Stage 6: evaluate every variant -> ``OUT/metrics.json`` and ``OUT/evaluation.json``.

Variants (the ablation): ``no_synthetic`` (the CDM alone, zero-shot through the prototypes),
``plain_prompt`` (classifier trained with plain-prompt images) and ``dct`` (with DCT images, the
method; its figures are also the top-level keys). Calibration lambda comes from validation data
only: held-out seen images (the val split) and held-out synthetic images; test images are scored
once with the chosen lambda. The CDM has no synthetic data of its own, so it is calibrated on the
DCT run's held-out synthetic images (its own file OUT/cdm/metrics.json reports it uncalibrated).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from ..evaluate import full_report
from ..generation import VARIANT_DCT, VARIANT_PLAIN, is_validation_row, read_manifest
from ..io import write_json
from .common import RunDir

log = logging.getLogger("digzsl")

HEADLINE = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H")


def _split_val(scores: np.ndarray, labels: np.ndarray, seen: list[int]):
    is_seen = np.isin(labels, seen)
    return scores[is_seen], labels[is_seen], scores[~is_seen], labels[~is_seen]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def cdm_synthetic_val_scores(cfg, rd: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """CDM logits of the held-out DCT images (the no-synthetic baseline's unseen validation data)."""
    import pyarrow.parquet as pq

    from ..cdm import load_cdm
    from ..images import decode_png_bytes
    from ..models.presets import pick_device
    from .generate import variant_dir

    d = variant_dir(rd, VARIANT_DCT)
    manifest = read_manifest(d)
    if manifest is None:
        raise FileNotFoundError(f"{d}/_manifest.json: missing; run `digzsl generate` before `digzsl evaluate`")
    device = pick_device(cfg.models.device)
    cdm = load_cdm(rd.cdm, device)
    scores, labels = [], []
    for f in manifest["shards"]:
        t = pq.read_table(d / f, columns=["png", "label", "seed"]).to_pydict()
        keep = [i for i, s in enumerate(t["seed"]) if is_validation_row(s, cfg.classifier.synthetic_val_fraction)]
        if not keep:
            continue
        x = decode_png_bytes([t["png"][i] for i in keep], cdm.image_size).float().div(255).to(device)
        with torch.no_grad():
            scores.append(cdm(x).float().cpu().numpy())
        labels.append(np.asarray([t["label"][i] for i in keep]))
    if not scores:  # no held-out synthetic rows (synthetic_val_fraction 0, or very few images)
        return np.zeros((0, len(cdm.meta["class_names"]))), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(labels)


def run_evaluate(cfg, rd: RunDir, split) -> dict:
    from .classifier import SCORES, classifier_dir
    from .cdm import SCORES_FILE

    grid = np.linspace(0.0, cfg.evaluate.lambda_max, cfg.evaluate.lambda_grid)
    seen, unseen = list(split.seen), list(split.unseen)
    reports: dict[str, dict] = {}

    # 1. no_synthetic: the CDM (temperature-scaled cosine logits -> probabilities).
    s = np.load(rd.cdm / SCORES_FILE)
    syn_scores, syn_labels = cdm_synthetic_val_scores(cfg, rd)
    v = s["val_scores"][np.isin(s["val_labels"], seen)], s["val_labels"][np.isin(s["val_labels"], seen)]
    reports["no_synthetic"] = full_report(
        _softmax(s["test_seen_scores"]), s["test_seen_labels"], _softmax(s["test_unseen_scores"]), s["test_unseen_labels"],
        _softmax(v[0]), v[1], _softmax(syn_scores), syn_labels, seen, unseen, grid)

    # 2. Classifiers trained with synthetic images.
    for variant in (VARIANT_PLAIN, VARIANT_DCT):
        d = classifier_dir(rd, variant)
        if not (d / SCORES).is_file():
            continue
        c = np.load(d / SCORES)
        vs, vys, vu, vyu = _split_val(c["val_scores"], c["val_labels"], seen)
        reports[variant] = full_report(c["test_seen_scores"], c["test_seen_labels"], c["test_unseen_scores"],
                                       c["test_unseen_labels"], vs, vys, vu, vyu, seen, unseen, grid)

    # 3. metrics.json (DESIGN section 3) and evaluation.json (per class, confusion).
    main = reports.get(VARIANT_DCT) or reports["no_synthetic"]
    metrics = {k: round(float(main[k]), 3) for k in HEADLINE}
    metrics["calibration_lambda"] = round(float(main["calibration_lambda"]), 4)
    metrics["ausuc"] = round(float(main["ausuc"]), 3)
    metrics["ablation"] = {name: {k: round(float(r[k]), 3) for k in HEADLINE} | {
        "calibration_lambda": round(float(r["calibration_lambda"]), 4), "ausuc": round(float(r["ausuc"]), 3)}
        for name, r in reports.items()}
    metrics["chance_zsl_top1"] = round(100.0 / len(unseen), 3)
    metrics["num_classes"] = {"seen": len(seen), "unseen": len(unseen)}
    timing = rd.root / "timing.json"
    metrics["timing_s"] = json.loads(timing.read_text()) if timing.is_file() else {}
    prev = json.loads(rd.metrics.read_text()) if rd.metrics.is_file() else {}
    metrics["peak_rss_mb"] = prev.get("peak_rss_mb", 0.0)
    for key in ("peak_rss_sum_mb", "peak_memory_breakdown"):  # recorded by `digzsl run`; keep on re-evaluation
        if key in prev:
            metrics[key] = prev[key]
    write_json(rd.metrics, metrics)
    details = {name: {**{k: v for k, v in r.items() if k not in ("per_class_gzsl", "per_class_zsl")},
                      "per_class_gzsl": {split.classes[i]: a for i, a in r["per_class_gzsl"].items()},
                      "per_class_zsl": {split.classes[i]: a for i, a in r["per_class_zsl"].items()}}
               for name, r in reports.items()}
    write_json(rd.root / "evaluation.json", {"classes": split.classes, "seen": seen, "unseen": unseen,
                                             "variants": details})
    return metrics


def format_headline(metrics: dict) -> str:
    """The table `digzsl run` and `make demo` print."""
    lines = [f"{'variant':<14}{'ZSL T1':>9}{'GZSL U':>9}{'GZSL S':>9}{'GZSL H':>9}{'lambda':>9}{'AUSUC':>9}"]
    for name in ("no_synthetic", "plain_prompt", "dct"):
        r = metrics["ablation"].get(name)
        if r:
            lines.append(f"{name:<14}{r['zsl_top1']:>9.1f}{r['gzsl_U']:>9.1f}{r['gzsl_S']:>9.1f}{r['gzsl_H']:>9.1f}"
                         f"{r['calibration_lambda']:>9.3f}{r['ausuc']:>9.1f}")
    lines.append(f"(chance ZSL top-1: {metrics['chance_zsl_top1']:.1f}; accuracies in percent, "
                 f"mean of per-class accuracies; lambda chosen on validation data)")
    return "\n".join(lines)
