"""Stage: evaluate every variant -> ``OUT/evaluation.json`` (``OUT/metrics.json`` is assembled from it).

ZSL: the test images holding an unseen label (``test_unseen``), scored on the unseen labels' columns;
GZSL: every test image (``test_unseen`` + ``test_seen``) on all columns; mAP and overall P/R/F1 at
k = 3 and 5 under the metric protocol ``metrics.preset`` (:mod:`digzsl_ray.metrics.multilabel`).
The main variant's figures are the top-level keys (``zsl_mAP``, ``zsl_F1@3``, ...), every variant's
under ``ablation``. The served decision threshold (a label is answered when its probability exceeds
it) is chosen on validation data only: the F1 over held-out real seen images (seen columns) and
held-out synthetic images (unseen columns) together, on ``metrics.threshold_grid`` thresholds.

Beside the trained variants, ``clip_zero_shot``: the frozen CLIP with the run's prototypes and no
training (class-token features at ``classifier.image_size``, the positional grid resized as the
classifier does; each label's score its cosine to the label's prototype times CLIP's logit scale),
scored by the same metric preset. It is not served (no threshold).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.io import read_json, write_json
from digzsl_ray.methods.multilabel.variants import CLIP_ZERO_SHOT, main_variant, variants
from digzsl_ray.stages.contract import Stage, file_sha
from digzsl_ray.stages.rundir import stage_timing, write_metrics

log = logging.getLogger("digzsl")


def f1_at_threshold(blocks: list[tuple[np.ndarray, np.ndarray]], t: float) -> float:
    tp = fp = fn = 0
    for s, y in blocks:
        pred = s > t
        tp += int((pred & (y > 0)).sum())
        fp += int((pred & (y <= 0)).sum())
        fn += int((~pred & (y > 0)).sum())
    return 0.0 if tp == 0 else 200 * tp / (2 * tp + fp + fn)


def choose_threshold(blocks, grid: int) -> tuple[float, float]:
    """``(threshold, validation F1)``: the best of ``grid`` thresholds in (0, 1) (ties: the lower)."""
    best = (-1.0, 0.5)
    for t in np.linspace(0.05, 0.95, grid):
        f = f1_at_threshold(blocks, float(t))
        if f > best[0]:
            best = (f, float(t))
    return round(best[1], 4), round(best[0], 2)


def ranking(s: dict, key: str) -> np.ndarray:
    """What a ranking metric reads of ``key`` (``test_unseen``, ...): the margins (log-odds) where the
    classifier wrote them, else the scores (older runs; the floor's logits). Probabilities saturate to
    exact ties in floating point; their log-odds do not."""
    return s[f"{key}_margins"] if f"{key}_margins" in s else s[f"{key}_scores"]


def variant_metrics(s, split, preset: str) -> dict:
    from digzsl_ray.metrics.multilabel import average_precision, zsl_gzsl

    unseen = list(split.unseen)
    g_scores = np.concatenate([ranking(s, "test_unseen"), ranking(s, "test_seen")])
    g_labels = np.concatenate([s["test_unseen_labels"], s["test_seen_labels"]])
    m = {k: round(float(v), 2) for k, v in zsl_gzsl(ranking(s, "test_unseen"), s["test_unseen_labels"], unseen, preset,
                                                   scores_gzsl=g_scores, labels_gzsl=g_labels).items()}
    ap = average_precision(ranking(s, "test_unseen")[:, unseen], s["test_unseen_labels"][:, unseen], preset)
    m["per_label_AP"] = {split.classes[u]: round(float(a), 2) for u, a in zip(unseen, ap)}
    return m


def paired_acceptance(ctx) -> dict:
    """The untuned and the tuned encoder on the rows both generated (round 0: the same label sets,
    prompts and seeds): the filter's acceptance of each and an exact McNemar test (``a`` = base,
    ``b`` = tuned), so a change of acceptance can be told from the draw."""
    from digzsl_ray.methods.multilabel.generation import read_set
    from digzsl_ray.metrics.multilabel import mcnemar

    sets = {}
    for s in ("base", "tuned"):
        t = read_set(ctx.path(f"generate:{s}"), ["index", "seed", "accepted"]).to_pydict()
        sets[s] = {(i, sd): a for i, sd, a in zip(t["index"], t["seed"], t["accepted"])}
    shared = sorted(set(sets["base"]) & set(sets["tuned"]))
    out = mcnemar(np.array([sets["base"][k] for k in shared]), np.array([sets["tuned"][k] for k in shared]))
    out.update(a="base", b="tuned", base_pct=round(100 * (out["both"] + out["a_only"]) / max(1, out["rows"]), 2),
               tuned_pct=round(100 * (out["both"] + out["b_only"]) / max(1, out["rows"]), 2))
    return out


def clip_zero_shot_scores(ctx) -> dict:
    """The floor's scores and multi-hot labels of the test images (``test_unseen_*``, ``test_seen_*``)."""
    from digzsl_ray.features import FrozenCLIP, zero_shot_logits
    from digzsl_ray.metrics.multilabel import multi_hot
    from digzsl_ray.models.presets import clip_image_size
    from digzsl_ray.models.vit import set_vit_resolution
    from digzsl_ray.prototypes import load_prototypes

    cfg, split = ctx.cfg, ctx.split
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, cfg.models.device,
                      cache_dir=ctx.rd.root / "features")
    if set_vit_resolution(clip.model.visual, cfg.classifier.image_size):
        clip.size = clip_image_size(clip.model)
    protos = load_prototypes(ctx.require("prototypes:prototypes"))[0]
    out = {}
    for key in ("test_unseen", "test_seen"):
        items = split.items[key]
        feats = clip.of_paths([it.path for it in items], progress=ctx.progress, desc=f"clip_zero_shot {key}")[0]
        out[f"{key}_scores"] = zero_shot_logits(feats, protos, clip.scale)
        out[f"{key}_labels"] = multi_hot([list(it.labels) for it in items], len(split.classes))
    return out


class EvaluateStage(Stage):
    name = "evaluate"
    help = "score every variant's test images: ZSL/GZSL mAP and P/R/F1@3,5 -> OUT/evaluation.json, OUT/metrics.json"
    writes = {"evaluation": "evaluation.json"}
    requires = ("train-classifier:dir",)
    depends_on = ("metrics",)
    needs_ray = False

    def fingerprint(self, ctx, *extra) -> str:
        shas = {v: file_sha(ctx.path(f"train-classifier:{v}") / "scores.npz") for v in variants(ctx.cfg)}
        return super().fingerprint(ctx, shas, *extra)

    def complete(self, ctx) -> bool:
        p = ctx.path("evaluate:evaluation")
        return p.is_file() and read_json(p).get("fingerprint") == self.fingerprint(ctx)

    def cached(self, ctx) -> dict:
        m = read_json(ctx.path("evaluate:evaluation"))["metrics"]
        return {k: m[k] for k in ("zsl_mAP", "zsl_F1@3", "gzsl_mAP", "gzsl_F1@3", "variant")}

    def run(self, ctx) -> dict:
        cfg, split = ctx.cfg, ctx.split
        t0 = time.time()
        preset = cfg.metrics.preset
        main = main_variant(cfg)
        ablation, thresholds = {}, {}
        for v in variants(cfg):
            d = ctx.require(f"train-classifier:{v}")
            with np.load(d / "scores.npz") as z:
                s = {k: z[k] for k in z.files}
            ablation[v] = variant_metrics(s, split, preset)
            seen, unseen = list(split.seen), list(split.unseen)
            blocks = [(s["val_scores"][:, seen], s["val_labels"][:, seen])]
            if "synthetic_val_scores" in s and len(s["synthetic_val_labels"]):
                blocks.append((s["synthetic_val_scores"][:, unseen], s["synthetic_val_labels"][:, unseen]))
            thresholds[v], ablation[v]["val_F1_at_threshold"] = choose_threshold(blocks, cfg.metrics.threshold_grid)
            ablation[v]["threshold"] = thresholds[v]
            ablation[v]["best_epoch"] = read_json(d / "config.json")["best"]["epoch"]
        try:
            floor = variant_metrics(clip_zero_shot_scores(ctx), split, preset)
            ablation = {CLIP_ZERO_SHOT: {**floor, "threshold": None, "val_F1_at_threshold": None, "best_epoch": None},
                        **ablation}
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("evaluate: clip_zero_shot (the frozen CLIP floor) skipped: %s", str(e)[:200])
        acceptance = {}
        for image_set in ("base", "tuned"):
            p = ctx.path(f"generate:{image_set}_manifest")
            if p.is_file():
                acceptance[image_set] = read_json(p)["acceptance"]
        if {"base", "tuned"} <= set(acceptance):
            acceptance["paired"] = paired_acceptance(ctx)
        tune = ctx.path("tune-text-encoder:summary")
        metrics = {k: v for k, v in ablation[main].items() if k != "per_label_AP"}
        metrics.update({"variant": main, "metric_preset": preset, "threshold": thresholds[main],
                        "threshold_selection": "F1 on validation data (held-out real seen + synthetic unseen images)",
                        "ablation": ablation, "acceptance": acceptance,
                        "tuning": ({k: read_json(tune)[k] for k in ("chosen_step", "chosen", "untuned")}
                                   if tune.is_file() and cfg.tune.enabled else None),
                        "task": "multi_label"})
        write_json(ctx.path("evaluate:evaluation"), {"metrics": metrics, "fingerprint": self.fingerprint(ctx)})
        stage_timing(ctx.rd, "evaluate", time.time() - t0)
        if not ctx.state.get("pipeline"):
            write_metrics(ctx.rd)
        log.info("evaluate: %s", "; ".join(f"{v}: ZSL mAP {a['zsl_mAP']:.1f}, GZSL mAP {a['gzsl_mAP']:.1f}"
                                             for v, a in ablation.items()))
        return self.cached(ctx)
