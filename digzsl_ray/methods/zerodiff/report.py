"""``OUT/report.html`` of a ZeroDiff run: the results table (with the protocol), generator training
curves per fold (critic loss, Wasserstein estimate, adaptive penalty weight), the spuriousness
metrics over epochs (ours), a t-SNE of real vs generated unseen features, per-class accuracy.
"""

from __future__ import annotations

import html

import numpy as np

from digzsl_ray.htmlreport import fig_png, img_tag, page, read_json_or_empty
from digzsl_ray.io import write_text
from digzsl_ray.methods.zerodiff.curves import generator_curves
from digzsl_ray.methods.zerodiff.folds import FOLDS
from digzsl_ray.metrics.zsl import format_headline


def _curves(curves: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for row, phase in enumerate(("drg", "dfg")):
        for col, key in enumerate(("loss_d", "wasserstein", "lambda_gp")):
            ax = axes[row, col]
            for f in FOLDS:
                pts = curves.get(f"{f}/{phase}/{key}", [])
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=f"{f} fold")
            ax.set_title(f"{phase.upper()}: {key}")
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return img_tag(fig_png(fig), "generator curves")


def _spurious(curves: dict) -> str:
    import matplotlib.pyplot as plt

    keys = ("spurious_seen_z", "spurious_unseen_z", "semantic_error_unseen")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key in zip(axes, keys):
        for f in FOLDS:
            pts = curves.get(f"{f}/dfg/spurious/{key}", [])
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=f"{f} fold")
        ax.set_title(key)
        ax.set_xlabel("DFG epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return img_tag(fig_png(fig), "spuriousness")


def _tsne(ctx) -> str:
    """t-SNE of real test-unseen features and generated unseen features (final fold, base generator)."""
    import matplotlib.pyplot as plt
    import torch
    from sklearn.manifold import TSNE

    from digzsl_ray.methods.zerodiff.features import load_features
    from digzsl_ray.methods.zerodiff.folds import build_folds
    from digzsl_ray.methods.zerodiff.semantics import class_semantics
    from digzsl_ray.methods.zerodiff.models import load_fold_models
    from digzsl_ray.methods.zerodiff.models import generated_unseen

    cfg, split = ctx.cfg, ctx.split
    att = class_semantics(cfg, split, ctx.path("prototypes:prototypes"))
    folds = build_folds(cfg, split, load_features(ctx.path("extract-features:dir")))
    p, drg, dfg, _ = load_fold_models(ctx, {"final": folds["final"]}, att)["final"]
    classes = list(split.unseen)[:10]
    rng = np.random.default_rng(0)
    real_x, real_y = p.x["test_unseen"], p.y["test_unseen"]
    keep = np.concatenate([rng.permutation(np.where(real_y == c)[0])[:40] for c in classes])
    gx, gy = generated_unseen(drg, dfg, torch.from_numpy(att), classes, 40, cfg.synthetic.seed)
    x = np.concatenate([real_x[keep], gx])
    if len(x) < 10:
        return "<p>too few features for a t-SNE</p>"
    emb = TSNE(n_components=2, perplexity=min(30, len(x) // 4), random_state=0, init="pca").fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    n_real = len(keep)
    for i, c in enumerate(classes):
        r = real_y[keep] == c
        g = gy == c
        ax.scatter(emb[:n_real][r, 0], emb[:n_real][r, 1], s=14, color=cmap(i), marker="o", label=split.classes[c])
        ax.scatter(emb[n_real:][g, 0], emb[n_real:][g, 1], s=18, color=cmap(i), marker="x")
    ax.set_title("t-SNE, final fold: real test-unseen (o) vs generated (x)")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return img_tag(fig_png(fig), "t-SNE")


def _per_class(ctx, ev: dict) -> str:
    import matplotlib.pyplot as plt

    variants = [v for v in ctx.method.variants if v in ev.get("variants", {})]
    if not variants:
        return ""
    names = ctx.split.unseen_names
    fig, ax = plt.subplots(figsize=(12, 3.8))
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        acc = ev["variants"][v]["per_class_zsl"]
        ax.bar(np.arange(len(names)) + i * w, [acc.get(n, 0.0) for n in names], width=w, label=v)
    ax.set_xticks(np.arange(len(names)) + 0.4, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ZSL accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return img_tag(fig_png(fig), "per-class accuracy")


def build_report(ctx):
    metrics = read_json_or_empty(ctx.rd.metrics)
    ev = read_json_or_empty(ctx.path("evaluate:evaluation"))
    curves = generator_curves(ctx)
    parts = [f"<h1>ZeroDiff++ run: {html.escape(ctx.cfg.name)}</h1>"]
    if metrics.get("select_on_test"):
        parts.append("<p><b>TEST-SELECTED</b>: epoch and lambda were chosen on the test set "
                     "(evaluate.select_on_test, the reference's protocol). Not a zero-shot result.</p>")
    if metrics:
        parts.append("<h2>Results</h2><pre>" + html.escape(format_headline(metrics, ctx.method.variants)) + "</pre>")
        parts.append("<p>base = ZeroDiff; diffgen, difftta and full (= ZeroDiff++) implement <b>our reading</b> of "
                     "ZeroDiff++ (docs/zerodiff.md). Validation-fold figures (what the choices were made on): "
                     + html.escape(str(metrics.get("validation_fold", {}))) + "</p>")
        parts.append("<p>Pseudo-labels: " + html.escape(str(metrics.get("pseudo_labels", {}))) + "</p>")
    parts.append("<h2>Generator training</h2>" + _curves(curves))
    parts.append("<h2>Spuriousness (ours, docs/zerodiff.md)</h2><p>z = gap divided by the std of the critic's "
                 "scores on training features; final fold held-out data are test data (measurement only).</p>"
                 + _spurious(curves))
    try:
        parts.append("<h2>Real vs generated features</h2>" + _tsne(ctx))
    except Exception as e:  # a report must not fail a finished run
        parts.append(f"<p>t-SNE unavailable: {html.escape(type(e).__name__)}: {html.escape(str(e)[:200])}</p>")
    parts.append("<h2>Per-class ZSL accuracy (unseen classes)</h2>" + _per_class(ctx, ev))
    path = ctx.path("evaluate:report")
    write_text(path, page(f"ZeroDiff++ {ctx.cfg.name}", parts))
    return path
