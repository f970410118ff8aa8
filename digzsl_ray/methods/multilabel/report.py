"""``OUT/report.html`` of a multi-label run: one self-contained page.

Sections: the results table; generated images per label pair, untuned and tuned text encoder side
by side (the same prompts and seeds), each with the discriminator's decision; a table of decisions
with the probabilities of the target labels; acceptance rates per label; per-label AP of every
variant; training curves (tuning validation acceptance, classifier validation mAP).
"""

from __future__ import annotations

import html
import json
from collections import defaultdict

import numpy as np

from digzsl_ray.htmlreport import fig_png, grid_b64, img_tag, page, read_json_or_empty
from digzsl_ray.io import write_text
from digzsl_ray.methods.multilabel.curves import classifier_curves, tuning_curves
from digzsl_ray.methods.multilabel.variants import BASE, VARIANTS, image_sets
from digzsl_ray.metrics.multilabel import format_headline


def _rows(ctx, image_set: str, limit_pairs: int, per_pair: int) -> dict:
    """``{pair: [row]}`` for the first ``limit_pairs`` target sets (rows: png, prompt, decision)."""
    from digzsl_ray.methods.multilabel.generation import read_set

    d = ctx.path(f"generate:{image_set}")
    if not (d / "_manifest.json").is_file():
        return {}
    t = read_set(d, ["png", "index", "target_labels", "prompt", "accepted", "labels", "labels_added", "probs",
                     "reason"]).to_pydict()
    out: dict = defaultdict(list)
    for i in range(len(t["index"])):
        key = tuple(t["target_labels"][i])
        if key not in out and len(out) >= limit_pairs:
            continue
        if len(out[key]) < per_pair:
            out[key].append({k: t[k][i] for k in t})
    return dict(out)


def _decision_text(r: dict, candidates: list[str]) -> str:
    probs = dict(zip(candidates, r["probs"]))
    tp = ", ".join(f"{n} {probs.get(n, 0):.2f}" for n in r["target_labels"])
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    mark = "<span class=ok>accepted</span>" if r["accepted"] else "<span class=no>rejected</span>"
    extra = f"; added {', '.join(r['labels_added'])}" if r["labels_added"] else ""
    return (f"{mark}: targets {html.escape(tp)}; top-3 {html.escape(', '.join(f'{n} {p:.2f}' for n, p in top))}"
            f"{html.escape(extra)}<br><small>{html.escape(r['reason'])}</small>")


def _image_pairs(ctx, candidates: list[str], pairs: int, per_pair: int) -> list[str]:
    """Section 1: the generated images per label pair (untuned | tuned), each with its filter decision."""
    parts: list[str] = []
    sets = image_sets(ctx.cfg)
    rows = {s: _rows(ctx, s, pairs, per_pair) for s in sets}
    parts.append("<h2>Generated images per label pair</h2><p>The same prompts and seeds through the untuned and "
                 "the tuned text encoder; each image's filter decision below it.</p><table>")
    parts.append("<tr><th>target labels / prompt</th>" + "".join(f"<th>{s} text encoder</th>" for s in sets) + "</tr>")
    for key, base_rows in rows.get(BASE, {}).items():
        cells = []
        for s in sets:
            rs = rows[s].get(key, [])
            if not rs:
                cells.append("<td>-</td>")
                continue
            dec = "".join(f"<li>{_decision_text(r, candidates)}</li>" for r in rs)
            cells.append(f"<td>{img_tag(grid_b64([r['png'] for r in rs], len(rs)), ' + '.join(key), '420px')}"
                         f"<ol style='font-size:80%'>{dec}</ol></td>")
        parts.append(f"<tr><td><b>{html.escape(' + '.join(key))}</b><br><small>"
                     f"{html.escape(base_rows[0]['prompt'])}</small></td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def _acceptance_per_label(acc: dict, candidates: list[str]) -> str:
    """Section 2: the filter's acceptance rate per unseen label of each image set (an embedded PNG)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, len(candidates) * 0.5), 4))
    width = 0.8 / max(1, len(acc))
    for k, (s, a) in enumerate(acc.items()):
        ax.bar(np.arange(len(candidates)) + k * width, [a["per_label"].get(n) or 0 for n in candidates], width,
               label=f"{s} ({a['overall']:.1f}% overall)")
    ax.set_xticks(np.arange(len(candidates)) + width * (len(acc) - 1) / 2, candidates, rotation=70, ha="right",
                  fontsize=7)
    ax.set_ylabel("accepted (% of images holding the label)")
    ax.set_title("Filter acceptance per unseen label")
    ax.legend()
    return img_tag(fig_png(fig), "acceptance per label")


def _per_label_ap(ablation: dict, variants: list[str], candidates: list[str]) -> str:
    """Section 3: per-label AP of every variant on the ZSL test set (an embedded PNG)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, len(candidates) * 0.5), 4))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        ap = ablation[v].get("per_label_AP", {})
        ax.bar(np.arange(len(candidates)) + k * width, [ap.get(n, 0.0) for n in candidates], width,
               label=f"{v} (mAP {ablation[v]['zsl_mAP']:.1f})")
    ax.set_xticks(np.arange(len(candidates)) + width * (len(variants) - 1) / 2, candidates, rotation=70,
                  ha="right", fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_title("Per-label AP on the ZSL test set (unseen labels)")
    ax.legend(fontsize=7)
    return img_tag(fig_png(fig), "per-label AP")


def build_report(ctx, pairs: int = 12, per_pair: int = 4):
    """OUT/report.html of a multi-label run (the method's ``report`` hook)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, rd, split = ctx.cfg, ctx.rd, ctx.split
    metrics = read_json_or_empty(rd.metrics)
    ablation = metrics.get("ablation", {})
    variants = [v for v in ctx.method.variants if v in ablation]
    candidates = split.unseen_names
    parts = [f"<h1>digzsl-ray multi-label run: {html.escape(cfg.name)}</h1>",
             f"<p>Run directory <code>{html.escape(str(rd.root))}</code>. Dataset {html.escape(split.name)}: "
             f"{len(split.seen)} seen, {len(split.unseen)} unseen labels; metric preset "
             f"<code>{html.escape(str(metrics.get('metric_preset')))}</code>.</p>",
             "<h2>Results</h2><pre>" + html.escape(format_headline(metrics, ctx.method.variants)) + "</pre>"]
    tuning = metrics.get("tuning") or {}
    if tuning:
        parts.append(f"<p>Text-encoder tuning: exported step {tuning.get('chosen_step')}; validation acceptance "
                     f"{tuning.get('untuned', {}).get('val_acceptance', float('nan')):.1f}% untuned, "
                     f"{tuning.get('chosen', {}).get('val_acceptance', float('nan')):.1f}% chosen.</p>")
    conf = read_json_or_empty(ctx.path("tune-text-encoder:summary")).get("confirmation") if tuning else None
    if conf:
        parts.append(f"<p>Confirmation of step {conf['step']} on {conf['rows']} independent label sets: acceptance "
                     f"{conf['gain_pct']:+.1f} points (standard error {conf['se_pct']:.1f}): "
                     f"{'exported' if conf['confirmed'] else 'not confirmed, the untuned encoder was exported'}.</p>")
    paired = (metrics.get("acceptance") or {}).get("paired")
    if paired:
        parts.append(f"<p>The two encoders on the {paired['rows']} label sets both rendered: accepted "
                     f"{paired['base_pct']:.1f}% (untuned) and {paired['tuned_pct']:.1f}% (tuned); untuned only "
                     f"{paired['a_only']}, tuned only {paired['b_only']}, McNemar p = {paired['p_value']:.3g}.</p>")

    # 1. Generated images per label pair (untuned | tuned), with decisions.
    parts += _image_pairs(ctx, candidates, pairs, per_pair)

    # 2. Acceptance rates per label.
    acc = {k: v for k, v in metrics.get("acceptance", {}).items() if "per_label" in v}  # the image sets ("paired": a test)
    if acc:
        parts.append("<h2>Acceptance per label</h2>" + _acceptance_per_label(acc, candidates))

    # 3. Per-label AP of every variant.
    if variants:
        parts.append("<h2>Per-label AP</h2>" + _per_label_ap(ablation, variants, candidates))

    # 4. Training curves.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    h = tuning_curves(ctx).get("val_acceptance", [])
    if h:
        axes[0].plot([s for s, _ in h], [v for _, v in h], marker="o")
    axes[0].set_title("Tuning: filter acceptance on validation label sets (%)")
    axes[0].set_xlabel("step")
    classifiers = classifier_curves(ctx)
    for v in [v for v in variants if v in VARIANTS]:  # the trained ones (clip_zero_shot has no curve)
        hh = classifiers.get(f"{v}/selection", [])
        axes[1].plot([s for s, _ in hh], [x for _, x in hh], marker="o", label=v)
    axes[1].set_title("Classifier: held-out real seen mAP (selection score)")
    axes[1].set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    parts.append("<h2>Training curves</h2>" + img_tag(fig_png(fig), "training curves"))

    parts.append("<h2>Time and memory</h2><pre>" + html.escape(json.dumps(
        {"timing_s": metrics.get("timing_s", {}), "peak_rss_mb": metrics.get("peak_rss_mb")}, indent=2)) + "</pre>")
    out = rd.report
    write_text(out, page("digzsl-ray multi-label report", parts))
    return out
