"""``OUT/report.html``: one self-contained page (images embedded as base64 PNG).

Sections: the headline table; plain-prompt vs DCT image grids per unseen class; per-class ZSL
accuracy of the variants beside the frozen-CLIP floor; how far each token moved and what the CDM and the oracle say of its images; training curves
(CDM, token losses, classifiers); the GZSL confusion matrix of the DCT classifier.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from digzsl_ray.generation import read_manifest
from digzsl_ray.htmlreport import fig_png as _fig_png
from digzsl_ray.htmlreport import grid_b64 as _grid_b64
from digzsl_ray.htmlreport import img_tag as _img
from digzsl_ray.htmlreport import page as _page
from digzsl_ray.io import write_text
from digzsl_ray.methods.digzsl.curves import cdm_curves, classifier_curves, token_curves
from digzsl_ray.methods.digzsl.variants import DCT, PLAIN_PROMPT, SYNTHETIC
from digzsl_ray.metrics.zsl import format_headline

def _first_images(d: Path, per_class: int) -> dict[str, list[bytes]]:
    import pyarrow.parquet as pq

    m = read_manifest(d)
    out: dict[str, list[bytes]] = {}
    if not m:
        return out
    for f in m["shards"]:
        t = pq.read_table(d / f, columns=["png", "class_name"]).to_pydict()
        for png, name in zip(t["png"], t["class_name"]):
            if len(out.setdefault(name, [])) < per_class:
                out[name].append(png)
    return out


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _image_grids(ctx, index: dict, per_class_images: int) -> list[str]:
    """Section 1: plain-prompt vs DCT image grids, one table row per unseen class."""
    split = ctx.split
    parts: list[str] = []
    plain = _first_images(ctx.path(f"generate:{PLAIN_PROMPT}"), per_class_images)
    dct = _first_images(ctx.path(f"generate:{DCT}"), per_class_images)
    parts.append("<h2>Generated images: plain prompt vs DCT, per unseen class</h2><table>")
    parts.append("<tr><th>class</th><th>plain prompt</th><th>DCT prompt</th><th>token</th></tr>")
    for i in split.unseen:
        name = split.classes[i]
        entry = next((e for e in index.values() if e["name"] == name), {})
        cell_p = _img(_grid_b64(plain.get(name, []), per_class_images), f"plain {name}", "400px") if plain.get(name) else "-"
        cell_d = _img(_grid_b64(dct.get(name, []), per_class_images), f"dct {name}", "400px") if dct.get(name) else "-"
        info = html.escape(f"{entry.get('token', '')}: {entry.get('updates', '?')} updates, {entry.get('stop_reason', '')}")
        parts.append(f"<tr><td>{html.escape(name)}</td><td>{cell_p}</td><td>{cell_d}</td><td>{info}</td></tr>")
    parts.append("</table>")
    return parts


def _per_class_accuracy(ctx, evaluation: dict, variants: list[str]) -> str:
    """Section 2: per-class ZSL accuracy of the variants on test_unseen (an embedded PNG)."""
    import matplotlib.pyplot as plt

    split = ctx.split
    names = [split.classes[i] for i in split.unseen]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.5), 4))
    width = 0.8 / max(len(variants), 1)
    for k, v in enumerate(variants):
        acc = [evaluation["variants"][v]["per_class_zsl"].get(n, 0.0) for n in names]
        ax.bar(np.arange(len(names)) + k * width, acc, width, label=v)
    ax.set_xticks(np.arange(len(names)) + width * (len(variants) - 1) / 2, names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("ZSL accuracy (%)")
    ax.set_title("Per-class ZSL accuracy on test_unseen")
    ax.legend()
    return _img(_fig_png(fig), "per-class accuracy")


def _token_embeddings(ctx, index: dict) -> str:
    """Section 3: how far each token moved from its initial word, and what the CDM and the oracle
    say of its images (an embedded PNG)."""
    import matplotlib.pyplot as plt

    entries = sorted(index.values(), key=lambda e: e["name"])
    from safetensors.torch import load_file

    tokens_dir = ctx.path("learn-tokens:dir")
    learned = np.stack([next(iter(load_file(str(tokens_dir / e["file"])).values())).float().numpy()
                        for e in entries])
    init = np.stack([np.asarray(e["init_vector"], dtype=np.float32) for e in entries])
    moved = np.linalg.norm(learned - init, axis=1) / np.maximum(np.linalg.norm(init, axis=1), 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    colours = ["tab:green" if e.get("stop_reason") == "gamma" else "tab:orange" for e in entries]
    axes[0].barh(np.arange(len(entries)), moved, color=colours)
    axes[0].set_yticks(np.arange(len(entries)), [e["name"] for e in entries], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("||learned - initial|| / ||initial||")
    axes[0].set_title("How far each token moved (green: gamma stop; orange: patience / cap)")
    ev = [e.get("eval", {}) for e in entries]
    if all(x.get("learned", {}).get("oracle_acc") is not None for x in ev):
        cdm = np.array([x["learned"]["cdm_acc"] for x in ev]) * 100
        orc = np.array([x["learned"]["oracle_acc"] for x in ev]) * 100
        axes[1].scatter(cdm, orc, c=colours)
        for j, e in enumerate(entries):
            axes[1].annotate(e["name"], (cdm[j], orc[j]), fontsize=6)
        axes[1].plot([0, 100], [0, 100], color="gray", lw=0.6, ls="--")
        axes[1].set_xlabel("CDM accuracy on fresh images of the token (%)")
        axes[1].set_ylabel("oracle accuracy on the same images (%)")
        axes[1].set_title("Judges of the learned tokens' images (below the diagonal: the CDM is fooled)")
    else:
        axes[1].scatter(moved, [(x.get("learned", {}).get("cdm_acc") or 0) * 100 for x in ev], c=colours)
        axes[1].set_xlabel("relative move")
        axes[1].set_ylabel("CDM accuracy on fresh images (%)")
    fig.tight_layout()
    return _img(_fig_png(fig), "token movement and judges", "1000px")


def _confusion(ctx, evaluation: dict, variants: list[str]) -> str:
    """Section 5: the GZSL confusion matrix of the main variant (seen classes first; an embedded PNG)."""
    import matplotlib.pyplot as plt

    split = ctx.split
    main_name = ctx.method.main_variant if ctx.method.main_variant in evaluation["variants"] else variants[0]
    cm = np.asarray(evaluation["variants"][main_name]["confusion"], dtype=float)
    order = list(split.seen) + list(split.unseen)
    cm = cm[np.ix_(order, order)]
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = [split.classes[i] for i in order]
    side = min(30.0, max(7.0, 0.16 * len(order)))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=1)
    ax.axhline(len(split.seen) - 0.5, color="w", lw=0.8)
    ax.axvline(len(split.seen) - 0.5, color="w", lw=0.8)
    fontsize = max(2.0, min(7.0, 500 / max(len(order), 1)))
    ax.set_xticks(np.arange(len(order)), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(len(order)), labels, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"GZSL confusion of {main_name} (rows: true; seen classes first, then unseen)")
    fig.colorbar(im)
    return _img(_fig_png(fig), "confusion matrix", "700px")


def build_report(ctx, per_class_images: int = 8) -> Path:
    """OUT/report.html of a DIG-ZSL run (the method's ``report`` hook)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rd, split = ctx.cfg, ctx.rd, ctx.split
    metrics = _read(ctx.path("evaluate:metrics"))
    evaluation = _read(ctx.path("evaluate:evaluation"))
    index = _read(ctx.path("learn-tokens:index"))
    summary = _read(ctx.path("learn-tokens:summary"))
    parts = [f"<h1>digzsl-ray run: {html.escape(cfg.name)}</h1>",
             f"<p>Run directory <code>{html.escape(str(rd.root))}</code>. Dataset {html.escape(split.name)}: "
             f"{len(split.seen)} seen, {len(split.unseen)} unseen classes.</p>",
             "<h2>Results</h2><pre>" + html.escape(format_headline(metrics, ctx.method.variants)) + "</pre>"]
    if summary.get("mean"):
        m = summary["mean"]
        rows = "".join(f"<tr><td>{k}</td><td>{v:.1f}</td></tr>" for k, v in sorted(m.items()))
        parts.append("<h3>Token learning on fresh seeds (mean over unseen classes, %)</h3>"
                     f"<table border=1 cellpadding=3>{rows}</table>")

    # 1. Image grids plain vs DCT.
    parts += _image_grids(ctx, index, per_class_images)

    # 2. Per-class ZSL accuracy of the three variants.
    variants = [v for v in ctx.method.variants if v in evaluation["variants"]]
    parts.append("<h2>Per-class accuracy</h2>" + _per_class_accuracy(ctx, evaluation, variants))

    # 3. Token embeddings: how far each token moved from its initial word, and what two judges say of
    #    its images (a t-SNE of the raw vectors let one far-moved token squash the others into a corner).
    if index:
        parts.append("<h2>Token embeddings</h2>" + _token_embeddings(ctx, index))

    # 4. Training curves.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    cdm = cdm_curves(ctx).get("val_acc", [])
    axes[0].plot([s for s, _ in cdm], [v for _, v in cdm], marker="o")
    axes[0].set_title("CDM: validation accuracy (seen, %)")
    for name, pts in token_curves(ctx).items():
        if name.startswith("loss/"):
            axes[1].plot([s for s, _ in pts], [v for _, v in pts], lw=0.8)
    axes[1].set_title("DCT: loss per update (each line a class)")
    classifiers = classifier_curves(ctx)
    for variant in SYNTHETIC[::-1]:
        hh = classifiers.get(f"{variant}/val_acc")
        if hh:
            axes[2].plot([s for s, _ in hh], [v for _, v in hh], marker="o", label=variant)
    axes[2].set_title("Classifier: validation accuracy (%)")
    axes[2].legend()
    parts.append("<h2>Training curves</h2>" + _img(_fig_png(fig), "training curves"))

    # 5. Confusion matrix of the DCT classifier (GZSL, calibrated).
    parts.append("<h2>Confusion matrix</h2>" + _confusion(ctx, evaluation, variants))

    timing = metrics.get("timing_s", {})
    parts.append("<h2>Time and memory</h2><pre>" + html.escape(json.dumps(
        {"timing_s": timing, "peak_rss_mb": metrics.get("peak_rss_mb")}, indent=2)) + "</pre>")
    out = ctx.path("evaluate:report")
    write_text(out, _page("digzsl-ray report", parts))
    return out
