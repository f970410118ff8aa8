"""Stage: synthetic features, classifiers and evaluation of every variant -> ``OUT/metrics.json``,
``OUT/evaluation.json``, ``OUT/classifier_zd/<variant>/`` and ``OUT/report.html``.

See :mod:`digzsl_ray.methods.zerodiff.evaluate` for the variants and how each choice is made on
validation data. Runs in the driver (linear classifiers on features: seconds to minutes).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.io import write_json
from digzsl_ray.methods.zerodiff.variants import BASE, CLIP_ZERO_SHOT, FULL, VARIANTS
from digzsl_ray.methods.zerodiff.folds import FOLDS
from digzsl_ray.methods.zerodiff.models import load_fold_models
from digzsl_ray.metrics.zsl import calibration_summary, format_headline, full_report, headline_metrics
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing, write_metrics

log = logging.getLogger("digzsl")


def lambda_grid(cfg) -> np.ndarray:
    """Calibration lambdas in [-lambda_max, lambda_max]: a classifier trained on many synthetic unseen
    features can favour the unseen classes, and then the seen scores need a boost (lambda < 0), not
    the usual penalty; ties go to the smallest |lambda| (choose_lambda)."""
    return np.linspace(-cfg.evaluate.lambda_max, cfg.evaluate.lambda_max, 2 * cfg.evaluate.lambda_grid - 1)


def _pick(fit, sel):
    return fit["probs"][sel["epoch"]]


def evaluate_all(ctx, progress: bool = True) -> dict:
    """Every variant's classifier on both folds and the choices made on the validation fold.

    On the validation fold the real images of V and the held-out seen images are split per class into
    two halves: the transductive variants pseudo-label only the ``pool`` half and every variant is
    scored (epoch, lambda, the pseudo-label threshold) only on the ``score`` half, so no variant is
    scored on images it trained on. The final fold pseudo-labels its whole test pool (transductive,
    as the method intends) and is scored on it once, at the validation fold's choices."""
    from tqdm.auto import tqdm

    from digzsl_ray.methods.zerodiff.evaluate import fit_variant, select, validation_halves
    from digzsl_ray.methods.zerodiff.features import load_features
    from digzsl_ray.methods.zerodiff.folds import build_folds
    from digzsl_ray.methods.zerodiff.semantics import class_semantics
    from digzsl_ray.methods.zerodiff.variants import TRANSDUCTIVE

    cfg, split = ctx.cfg, ctx.split
    grid = lambda_grid(cfg)
    att = class_semantics(cfg, split, ctx.require("prototypes:prototypes"))
    folds = build_folds(cfg, split, load_features(ctx.path("extract-features:dir")))
    models = load_fold_models(ctx, folds, att)
    n = len(split.classes)
    t = cfg.transduct
    thresholds = sorted(set(t.threshold_grid)) or [t.threshold]
    halves = {"val": validation_halves(models["val"][0].y, cfg.data.val_seed), "final": None}
    fits: dict = {f: {} for f in FOLDS}
    sel: dict = {}
    pseudo: dict = {}
    chosen_threshold: dict = {}
    bar = tqdm(total=len(FOLDS) * (1 + len(TRANSDUCTIVE) * len(thresholds)), desc="evaluate variants",
               disable=not progress)
    # base first (it pseudo-labels the test pools), validation fold before the final fold
    for variant in VARIANTS:
        for f in FOLDS:
            p, drg, dfg, _ = models[f]
            tried = thresholds if variant != BASE else [None]
            if f == "final" and variant != BASE:
                tried = [chosen_threshold[variant]]
            best = None
            for th in tried:
                if th is not None and (f, th) not in pseudo:
                    pseudo[(f, th)] = _pseudo(fits[f][BASE], sel[BASE][f if f == "val" else "final"], p, th,
                                              t.per_class, halves[f])
                fit = fit_variant(cfg, p, drg, dfg, variant, pseudo[(f, th)][:2] if th is not None else None, n)
                s = select(fit, p, grid, "fold", halves[f]["score"] if halves[f] else None) if f == "val" else None
                if best is None or (s is not None and s["H"] > best[1]["H"]):
                    best = (fit, s, th)
                bar.update()
            fit, s, th = best
            fits[f][variant] = fit
            sel.setdefault(variant, {})
            if f == "val":
                sel[variant]["val"] = {**s, **({"threshold": th} if th is not None else {})}
                if th is not None:
                    chosen_threshold[variant] = th
            else:
                if th is not None:
                    sel[variant]["threshold"] = th
                sel[variant]["final_synthetic"] = select(fit, p, grid, "synthetic")
                if cfg.evaluate.select_on_test:  # the reference's protocol, only when asked for (labelled)
                    sel[variant]["final_test"] = select(fit, p, grid, "fold")
                chosen = ("final_test" if cfg.evaluate.select_on_test else
                          "val" if cfg.evaluate.calibration == "valclass" else "final_synthetic")
                sel[variant]["final"] = sel[variant][chosen]
        if variant != BASE:
            bar.update(len(thresholds) - 1)  # the final fold fits the chosen threshold only
    bar.close()
    used = {v: {f: pseudo[(f, th)][2] for f in FOLDS} for v, th in chosen_threshold.items()}
    ev = {"fits": fits, "sel": sel, "pseudo": used, "models": models, "att": att, "halves": halves,
          "thresholds": chosen_threshold}
    if cfg.softmax.zsl_classifier:
        ev.update(_zsl_classifiers(ctx, ev, progress))
    return ev


def _zsl_classifiers(ctx, ev: dict, progress: bool) -> dict:
    """The separate ZSL classifier of every variant (synthetic unseen features only, unseen columns only;
    the reference's). The transductive variants pseudo-label the ZSL test pool, test_unseen alone (on
    the validation fold its pool half), with base's GZSL classifier at its chosen epoch, argmax over
    the unseen columns, at the threshold their GZSL counterpart chose. The epoch is chosen on the validation
    fold's scoring half (``evaluate.select_on_test``: on the test set, labelled)."""
    from tqdm.auto import tqdm

    from digzsl_ray.methods.zerodiff.evaluate import fit_zsl_variant, select_zsl

    cfg, n = ctx.cfg, len(ctx.split.classes)
    models, halves = ev["models"], ev["halves"]
    fits: dict = {f: {} for f in FOLDS}
    sel: dict = {}
    pseudo: dict = {}
    bar = tqdm(total=len(FOLDS) * len(VARIANTS), desc="evaluate ZSL classifiers", disable=not progress)
    for variant in VARIANTS:
        for f in FOLDS:
            p, drg, dfg, _ = models[f]
            pz = None
            if variant != BASE:
                th = ev["thresholds"][variant]
                if (f, th) not in pseudo:  # base's GZSL classifier (confident enough to threshold; the ZSL
                    # classifier's softmax over the unseen columns alone is flat on these features)
                    pseudo[(f, th)] = _pseudo(ev["fits"][f][BASE], ev["sel"][BASE][f if f == "val" else "final"], p,
                                              th, cfg.transduct.per_class, halves[f], zsl=True)
                pz = pseudo[(f, th)][:2]
            fit = fit_zsl_variant(cfg, p, drg, dfg, variant, pz, n)
            fits[f][variant] = fit
            s = sel.setdefault(variant, {})
            if f == "val":
                s["val"] = select_zsl(fit, p, halves["val"]["score"]["test_unseen"])
            else:
                s["final"] = (select_zsl(fit, p) if cfg.evaluate.select_on_test
                              else {"epoch": s["val"]["epoch"], "zsl_top1": None})
            bar.update()
    bar.close()
    info = {f"{f}@{th}": v[2] for (f, th), v in pseudo.items()}
    return {"zsl_fits": fits, "zsl_sel": sel, "zsl_pseudo": info}


def _pseudo(base_fit: dict, base_sel: dict, p, threshold: float, per_class: int, halves: dict | None,
            zsl: bool = False) -> tuple:
    """(rows of the fold's test pool [test_seen; test_unseen], pseudo-labels, info) from the base
    classifier at its chosen epoch and lambda; on the validation fold only the ``pool`` half is
    pseudo-labelled. ``zsl``: the ZSL pool (test_unseen alone) labelled by the argmax over the unseen
    columns. ``from_test_seen``: the share of pseudo-labels drawn from seen-class images
    (wrong by construction, a measurement)."""
    from digzsl_ray.methods.zerodiff.transduct import pseudo_labels

    pr = _pick(base_fit, base_sel)
    n_seen = len(p.y["test_seen"])
    if halves:
        allowed = np.concatenate([[] if zsl else halves["pool"]["test_seen"], n_seen + halves["pool"]["test_unseen"]])
    else:
        allowed = np.arange(n_seen if zsl else 0, n_seen + len(p.y["test_unseen"]))
    allowed = allowed.astype(np.int64)
    if zsl:  # the argmax over the unseen columns only (the seen ones pushed to -inf)
        pool = pr["test_unseen"][allowed - n_seen]
        rows, labels = pseudo_labels(pool, p.fold.seen, p.fold.unseen, np.inf, threshold, per_class)
    else:
        pool = np.concatenate([pr["test_seen"], pr["test_unseen"]])[allowed]
        rows, labels = pseudo_labels(pool, p.fold.seen, p.fold.unseen, base_sel["lambda"], threshold, per_class)
    rows = allowed[rows]
    truth = np.concatenate([p.y["test_seen"], p.y["test_unseen"]])[rows]
    info = {"n": int(len(rows)), "threshold": float(threshold),
            "accuracy_measured": round(float((truth == labels).mean() * 100) if len(rows) else 0.0, 3),
            "from_test_seen": round(float((rows < n_seen).mean() * 100) if len(rows) else 0.0, 3)}
    return rows, labels, info


def reports_of(ctx, ev: dict, how: str) -> dict:
    """Every variant's full report on the final fold's test data at the epoch and lambda of ``how``
    ('val' = valclass, 'final_synthetic', 'final_test')."""
    split = ctx.split
    grid = lambda_grid(ctx.cfg)
    p = ev["models"]["final"][0]
    out = {}
    for v in VARIANTS:
        s = ev["sel"][v][how]
        pr = ev["fits"]["final"][v]["probs"][s["epoch"]]
        r = full_report(pr["test_seen"], p.y["test_seen"], pr["test_unseen"], p.y["test_unseen"],
                        np.zeros((0, len(split.classes))), np.zeros(0), np.zeros((0, len(split.classes))), np.zeros(0),
                        list(split.seen), list(split.unseen), grid, lam=s["lambda"])
        if "zsl_fits" in ev:  # ZSL top-1 from the separate ZSL classifier (the reference's)
            from digzsl_ray.metrics.zsl import per_class_accuracy, zsl_top1

            zs = ev["zsl_sel"][v]["final"]  # the validation fold's epoch (select_on_test: the test set's)
            zp = ev["zsl_fits"]["final"][v]["probs"][zs["epoch"]]["test_unseen"]
            unseen = list(split.unseen)
            pred = np.asarray(unseen)[zp[:, unseen].argmax(1)]
            r["zsl_top1_gzsl_classifier"] = r["zsl_top1"]
            r["zsl_top1"] = float(zsl_top1(zp, p.y["test_unseen"], unseen))
            r["per_class_zsl"] = {int(c): float(a) for c, a in zip(unseen, per_class_accuracy(p.y["test_unseen"],
                                                                                               pred, unseen))}
            r["zsl_epoch"] = zs["epoch"]
        r["validation"] = {"gzsl_U": s["U"], "gzsl_S": s["S"], "gzsl_H": s["H"], "epoch": s["epoch"],
                           "data": {"val": "validation fold: real held-out seen images + real images of the "
                                           "validation classes",
                                    "final_synthetic": "final fold: held-out real seen + held-out synthetic unseen",
                                    "final_test": "TEST data (select_on_test: the reference protocol)"}[how]}
        out[v] = r
    return out


class EvaluateStage(Stage):
    name = "evaluate"
    help = ("synthetic unseen features, softmax classifiers and ZSL/GZSL evaluation of base/diffgen/difftta/full "
            "-> OUT/metrics.json, OUT/evaluation.json, OUT/report.html")
    writes = {"evaluation": "evaluation.json", "metrics": "metrics.json", "report": "report.html",
              "classifier": "classifier_zd", "served": "classifier_zd/full"}
    reads = ("train-generators:val", "train-generators:final")
    requires = ("extract-features:meta", "train-representation:meta", "prototypes:prototypes")
    needs_ray = False

    def complete(self, ctx) -> bool:
        return False  # reassembles metrics.json: always redone

    def run(self, ctx) -> dict:
        cfg, split = ctx.cfg, ctx.split
        t0 = time.time()
        ev = evaluate_all(ctx, ctx.progress)
        how = ("final_test" if cfg.evaluate.select_on_test else
               "val" if cfg.evaluate.calibration == "valclass" else "final_synthetic")
        reports = reports_of(ctx, ev, how)
        floor = self._floor(ctx)
        if floor is not None:
            reports[CLIP_ZERO_SHOT] = floor
        metrics = headline_metrics(reports, main=FULL, n_unseen=len(split.unseen), n_seen=len(split.seen))
        cal = {"val": "valclass", "final_synthetic": "synthetic", "final_test": "test"}
        metrics["calibration"] = cal[how]
        metrics["main_variant"] = FULL
        metrics["select_on_test"] = bool(cfg.evaluate.select_on_test)
        if cfg.evaluate.select_on_test:
            metrics["protocol"] = ("TEST-SELECTED: epoch and lambda chosen on the test set (the reference's "
                                   "protocol, for comparison with published tables; not a zero-shot result)")
            for v in metrics["ablation"].values():
                v["test_selected"] = True
        others = {h: reports_of(ctx, ev, h) for h in ("val", "final_synthetic") if h != how}
        metrics["calibrations"] = {v: {cal[how]: calibration_summary(reports[v]),
                                       **{cal[h]: calibration_summary(r[v]) for h, r in others.items()}}
                                   for v in VARIANTS}
        if floor is not None:  # one lambda for every headline: the validation classes' real images
            metrics["calibrations"][CLIP_ZERO_SHOT] = {"valclass": calibration_summary(floor)}
        metrics["validation_fold"] = {v: {k: round(float(x), 3) for k, x in ev["sel"][v]["val"].items()}
                                      for v in VARIANTS}
        if "zsl_sel" in ev:
            metrics["zsl_classifier"] = {
                "note": "zsl_top1 of every variant comes from a separate classifier over the unseen classes trained "
                        "on synthetic unseen features only (the reference's); zsl_top1_gzsl_classifier is the GZSL "
                        "classifier's argmax over the unseen columns",
                "validation_zsl_top1": {v: round(ev["zsl_sel"][v]["val"]["zsl_top1"], 3) for v in VARIANTS},
                "epoch": {v: ev["zsl_sel"][v]["final"]["epoch"] for v in VARIANTS},
                "gzsl_classifier_zsl_top1": {v: round(float(reports[v]["zsl_top1_gzsl_classifier"]), 3)
                                             for v in VARIANTS},
                "pseudo_labels": ev["zsl_pseudo"]}
        metrics["pseudo_labels"] = ev["pseudo"].get(FULL, {})  # the main variant's, at its chosen threshold
        metrics["pseudo_labels_by_variant"] = ev["pseudo"]
        metrics["pseudo_labels_note"] = ("accuracy_measured: pseudo-label accuracy against the true labels, a "
                                         "measurement only (final fold: test labels); no choice uses it")
        metrics["ours"] = "diffgen, difftta, full and the spuriousness metrics implement our reading (docs/zerodiff.md)"
        from digzsl_ray.io import read_json

        metrics["spuriousness"] = {f: next((r["spurious"] for r in reversed(read_json(
            ctx.path(f"train-generators:{f}"))["history"]) if "spurious" in r), {}) for f in FOLDS}
        self._save_classifiers(ctx, ev, how)
        details = {v: {**{k: x for k, x in r.items() if k not in ("per_class_gzsl", "per_class_zsl")},
                       "per_class_gzsl": {split.classes[i]: a for i, a in r["per_class_gzsl"].items()},
                       "per_class_zsl": {split.classes[i]: a for i, a in r["per_class_zsl"].items()},
                       "info": ev["fits"]["final"][v]["info"] if v in ev["fits"]["final"] else {}}
                   for v, r in reports.items()}
        write_json(ctx.path("evaluate:evaluation"), {"classes": split.classes, "seen": list(split.seen),
                                                     "unseen": list(split.unseen), "variants": details,
                                                     "selection": ev["sel"], "metrics": metrics})
        stage_timing(ctx.rd, "evaluate", time.time() - t0)
        metrics = write_metrics(ctx.rd)
        if not ctx.state.get("pipeline"):
            ctx.method.report(ctx)
        return metrics

    def _floor(self, ctx) -> dict | None:
        """The frozen CLIP's zero-shot report with the run's prototypes, lambda from the validation
        classes' real images (None, logged, when the run's images or the CLIP are not at hand, e.g.
        xlsa17 res101 features without the image folder)."""
        from digzsl_ray.features import clip_zero_shot_arrays, clip_zero_shot_reports

        split = ctx.split
        try:
            z = clip_zero_shot_arrays(ctx.cfg, split, ctx.rd.root, ctx.require("prototypes:prototypes"))
            return clip_zero_shot_reports(z, list(split.seen), list(split.unseen), lambda_grid(ctx.cfg)).get("valclass")
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("evaluate: clip_zero_shot (the frozen CLIP floor) skipped: %s", str(e)[:200])
            return None

    def _save_classifiers(self, ctx, ev, how: str) -> None:
        """Each variant's final-fold classifier at its chosen epoch, servable (CLIP features only)."""
        import torch
        from safetensors.torch import save_file

        from digzsl_ray.io import atomic_path

        cfg, split = ctx.cfg, ctx.split
        p, drg, dfg, net = ev["models"]["final"]
        servable = cfg.features.source == "extract" and cfg.features.backbone == "clip"
        if servable:
            from digzsl_ray.classifier import input_size

            image_size = input_size(cfg.models)
        for v in VARIANTS:
            s = ev["sel"][v][how]
            st = ev["fits"]["final"][v]["states"][s["epoch"]]
            d = ctx.path("evaluate:classifier") / v
            d.mkdir(parents=True, exist_ok=True)
            tensors = {"head.weight": st["weight"].contiguous(), "head.bias": st["bias"].contiguous(),
                       "x_lo": torch.tensor(p.x_scale["lo"], dtype=torch.float32),
                       "x_span": torch.tensor(p.x_scale["span"], dtype=torch.float32),
                       "x_top": torch.tensor([p.x_scale["top"]], dtype=torch.float32)}
            if cfg.softmax.input == "xr":
                tensors.update({f"rep.{k}": w.contiguous() for k, w in net.state_dict().items()})
                tensors.update({"r_lo": torch.tensor(p.r_scale["lo"], dtype=torch.float32),
                                "r_span": torch.tensor(p.r_scale["span"], dtype=torch.float32),
                                "r_top": torch.tensor([p.r_scale["top"]], dtype=torch.float32)})
            with atomic_path(d / "weights.safetensors") as tmp:
                save_file(tensors, str(tmp))
            write_json(d / "classes.json", {"classes": split.classes, "seen": list(split.seen),
                                            "unseen": list(split.unseen)})
            write_json(d / "config.json", {"kind": "zerodiff-softmax", "variant": v, "epoch": s["epoch"],
                                           "lambda": s["lambda"], "input": cfg.softmax.input,
                                           "backbone": cfg.features.backbone, "source": cfg.features.source,
                                           "image_size": image_size if servable else 0,
                                           "clip": cfg.models.clip, "clip_pretrained": cfg.models.clip_pretrained,
                                           "represent": cfg.represent.model_dump(),
                                           "features_dir": str(ctx.path("extract-features:dir"))})

    def describe(self, ctx, metrics) -> str:
        return (format_headline(metrics, ctx.method.variants) + f"\nmetrics: {ctx.path('evaluate:metrics')}"
                f"\nreport:  {ctx.path('evaluate:report')}")
