"""multilabel_oracle: the MiniWorld oracle's judgement of the images the multi-label method generated.

    python benchmarks/multilabel_oracle.py [RUN ...] [--stride 16] [--threshold auto] [--name multilabel_oracle]

RUN: finished `digzsl run --config miniworld_multilabel` directories (default: the three seeds of
`benchmarks/multilabel_ablation.py --keep --out /work/runs/ml-abl`). No Ray, no retraining; CPU, one
torch thread. Writes `benchmarks/results/<name>.json`.

One CLIP is the filter, the tuning target, the checkpoint criterion and the classifier backbone; the
oracle (`digzsl_ray/assets/miniworld/oracle`, a CNN trained on rendered ground truth, never a training
signal) judges the images independently. It is a *single-object* classifier (one 32 px object -> one of
72 classes); it cannot read a 64 px scene whole. What it can judge: every 32 x 32 window of the scene
(stride `--stride`; 16 gives 9 windows, the 2 x 2 cells of a real scene among them); a label is *found*
when one window gives it softmax probability >= tau (tau >= 0.5, so a window names at most one label).
tau is chosen on the run's real training scenes (max pooled F1 against their true label sets), never on
generated images; the same rule on the real unseen test scenes is reported as `real_reference`, the
ceiling of this reading. The threshold-free `topk_recall` ranks labels by their best window and takes
as many as the row has targets. Two readings: `exact` (the label) and `colour_shape` (a target counts
as found when a found label has its colour and shape, the pattern ignored; distinct pairs per row).

Per run and encoder (`base` = untuned, `tuned`) and per subset (all rows, filter-accepted, rejected):
`recall` (mean over rows of the share of target labels found), `complete` (rows with every target
found), `precision` (pooled: found labels that were targets), `topk_recall`, `found_per_row`; and the
filter's agreement with the oracle: `complete` among accepted rows against rejected rows. Percent.
`paired`: an exact McNemar test of oracle-complete, base vs tuned, on the rows both encoders generated
(the same index and seed). `tuned_identical_to_base`: every tuned image has the bytes of its base row
(the tuning was not exported: `text_encoder_tuned/summary.json` chose step 0).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

DEFAULT_RUNS = [f"/work/runs/ml-abl/seed-{s}" for s in (0, 1, 2)]
ENCODERS = ("base", "tuned")
SUBSETS = ("all", "accepted", "rejected")
READINGS = ("exact", "colour_shape")
METRICS = ("recall", "complete", "precision", "topk_recall", "found_per_row")


# -- scoring (pure: label sets in, percentages out) ---------------------------------------------------

def _pct(num: float, den: float):
    return round(100.0 * num / den, 2) if den else None


def score(targets: list, found: list, ranked: list | None = None, key=None) -> dict:
    """Oracle figures of rows with target label sets ``targets`` and oracle-found label sets ``found``
    (``ranked``: each row's labels, best first, for ``topk_recall``; ``key``: what of a label must
    match, e.g. its colour and shape; default the label). Percent; ``None`` without rows (precision:
    without any label found)."""
    key = key or (lambda x: x)
    targets = [{key(x) for x in t} for t in targets]
    found = [{key(x) for x in f} for f in found]
    ranked = None if ranked is None else [list(dict.fromkeys(key(x) for x in r)) for r in ranked]
    n = len(targets)
    hits = [len(t & f) for t, f in zip(targets, found)]
    out = {"rows": n,
           "recall": _pct(sum(h / len(t) for h, t in zip(hits, targets) if t), sum(1 for t in targets if t)),
           "complete": _pct(sum(t <= f for t, f in zip(targets, found)), n),
           "precision": _pct(sum(hits), sum(len(f) for f in found)),
           "found_per_row": round(sum(len(f) for f in found) / n, 3) if n else None}
    if ranked is not None:
        top = [len(t & set(list(r)[:len(t)])) / len(t) for t, r in zip(targets, ranked) if t]
        out["topk_recall"] = _pct(sum(top), len(top))
    return out


def judge(targets: list, found: list, accepted: list, ranked: list | None = None, key=None) -> dict:
    """:func:`score` of all rows, the filter-accepted and the rejected ones, and the filter's agreement
    with the oracle: the share of oracle-complete rows among accepted against rejected rows."""
    def pick(xs, keep):
        return None if xs is None else [x for x, a in zip(xs, accepted) if bool(a) == keep]

    out = {"all": score(targets, found, ranked, key),
           "accepted": score(pick(targets, True), pick(found, True), pick(ranked, True), key),
           "rejected": score(pick(targets, False), pick(found, False), pick(ranked, False), key)}
    ca, cr = out["accepted"]["complete"], out["rejected"]["complete"]
    out["agreement"] = {"complete_if_accepted": ca, "complete_if_rejected": cr,
                        "difference": round(ca - cr, 2) if ca is not None and cr is not None else None}
    return out


# -- the oracle over windows ------------------------------------------------------------------------

def window_probs(model, images, stride: int):
    """Softmax ``[N, W, C]`` of the oracle over every 32 x 32 window (``stride``) of ``images``
    ``[N, 3, H, W]`` in 0..1, resized to 64 x 64 (a 2 x 2 scene of 32 px cells) first."""
    import torch
    import torch.nn.functional as F

    size = model.arch.image_size
    if images.shape[-1] != 2 * size or images.shape[-2] != 2 * size:
        images = F.interpolate(images, size=2 * size, mode="bilinear", antialias=True, align_corners=False)
    n = images.shape[0]
    win = images.unfold(2, size, stride).unfold(3, size, stride)  # [N, 3, h, w, size, size]
    win = win.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)
    with torch.no_grad():
        probs = torch.cat([model(win[i:i + 1024]).softmax(1) for i in range(0, len(win), 1024)])
    return probs.reshape(n, -1, probs.shape[-1])


def read_labels(probs, classes: list[str], tau: float, k: int = 4) -> tuple[list, list]:
    """``(found, ranked)``: labels whose best window reaches ``tau``; the ``k`` best labels by best window."""
    best = probs.max(dim=1).values  # [N, C]
    found = [[classes[j] for j in (row >= tau).nonzero().flatten().tolist()] for row in best]
    ranked = [[classes[j] for j in row.argsort(descending=True)[:k].tolist()] for row in best]
    return found, ranked


def _decode(pngs: list[bytes]):
    import numpy as np
    import torch
    from PIL import Image

    ims = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.uint8) for b in pngs]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255.0


def real_scenes(run: Path, split: str) -> tuple[list[bytes], list[list[str]]]:
    root = run / "data" / "miniworld-multilabel" / "zsl_multilabel"
    with open(root / "splits" / f"{split}.csv") as f:
        rows = list(csv.DictReader(f))
    return [(root / r["path"]).read_bytes() for r in rows], [r["label"].split("|") for r in rows]


def calibrate(probs, classes: list[str], truth: list) -> tuple[float, float]:
    """``(tau, pooled F1 percent)`` maximising pooled F1 of the found labels against ``truth``."""
    best = (0.5, -1.0)
    for i in range(50, 100):
        tau = i / 100
        found, _ = read_labels(probs, classes, tau)
        tp = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
        nf, nt = sum(len(f) for f in found), sum(len(t) for t in truth)
        f1 = 200.0 * tp / (nf + nt) if nf + nt else 0.0
        if f1 > best[1] + 1e-9:
            best = (tau, round(f1, 2))
    return best


# -- one run ----------------------------------------------------------------------------------------

def readings() -> dict:
    """``exact``: the label itself; ``colour_shape``: its coarse attributes only (the pattern ignored)."""
    from digzsl_ray.miniworld import world

    coarse = {s.name: f"{s.colour} {s.shape}" for s in world.all_classes()}
    return {"exact": None, "colour_shape": coarse.__getitem__}


def judge_run(run: Path, model, classes: list[str], stride: int, threshold: float | None) -> dict:
    from digzsl_ray.methods.multilabel.generation import read_set
    from digzsl_ray.metrics.multilabel import mcnemar

    keys = readings()
    t0 = time.time()
    pngs, truth = real_scenes(run, "trainval")
    cal = calibrate(window_probs(model, _decode(pngs), stride), classes, truth)
    tau = threshold if threshold is not None else cal[0]
    pngs, truth = real_scenes(run, "test_unseen")
    found, ranked = read_labels(window_probs(model, _decode(pngs), stride), classes, tau)
    out = {"run": str(run), "tau": tau, "calibration": {"split": "trainval", "tau": cal[0], "pooled_F1": cal[1]},
           "real_reference": {r: {"split": "test_unseen", **score(truth, found, ranked, k)} for r, k in keys.items()},
           "encoders": {}}
    rows = {}
    for enc in ENCODERS:
        d = run / "synthetic_ml" / enc
        if not (d / "_manifest.json").is_file():
            out["encoders"][enc] = None
            continue
        t = read_set(d, ["png", "index", "seed", "target_labels", "accepted"]).to_pydict()
        found, ranked = read_labels(window_probs(model, _decode(t["png"]), stride), classes, tau)
        out["encoders"][enc] = {r: judge(t["target_labels"], found, t["accepted"], ranked, k) for r, k in keys.items()}
        rows[enc] = {(i, sd): (png, tl, f)
                     for i, sd, png, tl, f in zip(t["index"], t["seed"], t["png"], t["target_labels"], found)}
    summary = run / "text_encoder_tuned" / "summary.json"
    s = json.loads(summary.read_text()) if summary.is_file() else None
    out["tuning"] = None if s is None else {"chosen_step": s.get("chosen_step"), "exported": s.get("chosen_step") != 0,
                                            "not_confirmed_step": (s.get("chosen") or {}).get("not_confirmed_step")}
    if all(rows.get(e) for e in ENCODERS):
        shared = sorted(set(rows["base"]) & set(rows["tuned"]))
        out["tuned_identical_to_base"] = (set(rows["base"]) == set(rows["tuned"])
                                          and all(rows["base"][k][0] == rows["tuned"][k][0] for k in shared))

        def complete(enc, k, key):
            _, tl, f = rows[enc][k]
            key = key or (lambda x: x)
            return {key(x) for x in tl} <= {key(x) for x in f}

        out["paired"] = {r: {"what": "oracle-complete, a = base, b = tuned, rows of the same (index, seed)",
                             **mcnemar([complete("base", k, key) for k in shared],
                                       [complete("tuned", k, key) for k in shared])} for r, key in keys.items()}
        m = run / "metrics.json"
        out["filter_paired"] = json.loads(m.read_text()).get("acceptance", {}).get("paired") if m.is_file() else None
    out["seconds"] = round(time.time() - t0, 1)
    return out


def mean_std(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "values": values}


def aggregate(per_run: list[dict]) -> dict:
    """Mean and sample std over the runs: ``{encoder: {reading: {subset|agreement: {metric: ...}}}}``."""
    out = {}
    for enc in ENCODERS:
        runs = [r["encoders"].get(enc) for r in per_run if r["encoders"].get(enc)]
        if not runs:
            out[enc] = None
            continue
        out[enc] = {}
        for rd in READINGS:
            a = {sub: {m: mean_std([r[rd][sub].get(m) for r in runs]) for m in ("rows",) + METRICS} for sub in SUBSETS}
            a["agreement"] = {k: mean_std([r[rd]["agreement"][k] for r in runs])
                              for k in ("complete_if_accepted", "complete_if_rejected", "difference")}
            out[enc][rd] = a
    out["real_reference"] = {rd: {m: mean_std([r["real_reference"][rd].get(m) for r in per_run]) for m in METRICS}
                             for rd in READINGS}
    return out


def _ms(d) -> str:
    return "-" if not d else f"{d['mean']:.1f} ± {d['std']:.1f}"


def table(agg: dict) -> str:
    cols = ("recall", "complete", "precision", "topk_recall")
    lines = []
    for rd in READINGS:
        lines.append(f"{rd + ' (percent)':24s} {'rows':>13s} " + " ".join(f"{c:>13s}" for c in cols))
        for enc in ENCODERS:
            if not agg.get(enc):
                lines.append(f"{enc}: no rows")
                continue
            for sub in SUBSETS:
                a = agg[enc][rd][sub]
                lines.append(f"{enc + ' ' + sub:24s} " + " ".join(f"{_ms(a[m]):>13s}" for m in ("rows",) + cols))
        r = agg["real_reference"][rd]
        lines.append(f"{'real test_unseen scenes':24s} {'':>13s} " + " ".join(f"{_ms(r[m]):>13s}" for m in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Judge the generated images of finished multi-label MiniWorld runs "
                                 "(untuned and tuned text encoder, all / filter-accepted / rejected rows) with the "
                                 "MiniWorld oracle over 32 px windows; writes benchmarks/results/<name>.json.")
    ap.add_argument("runs", nargs="*", default=DEFAULT_RUNS, help="run directories (default: %(default)s)")
    ap.add_argument("--stride", type=int, default=16,
                    help="window stride in pixels on the 64 px scene (default 16: 9 windows)")
    ap.add_argument("--threshold", default="auto",
                    help="oracle probability a window must reach for its label to be found (>= 0.5), or 'auto': "
                         "chosen per run on its real training scenes (default)")
    ap.add_argument("--name", default="multilabel_oracle", help="results file name (default: %(default)s)")
    args = ap.parse_args(argv)

    import torch

    from common import machine
    from digzsl_ray.io import write_json
    from digzsl_ray.miniworld.oracle import load_oracle
    from digzsl_ray.miniworld.provider import ORACLE_DIR

    torch.set_num_threads(1)
    threshold = None if args.threshold == "auto" else float(args.threshold)
    if threshold is not None and not 0.5 <= threshold <= 1.0:
        ap.error("--threshold: a float in [0.5, 1] or 'auto'")
    model, classes = load_oracle(ORACLE_DIR)
    per_run = []
    for run in args.runs:
        per_run.append(judge_run(Path(run), model, classes, args.stride, threshold))
        print(f"{run}: tau {per_run[-1]['tau']}, {per_run[-1]['seconds']} s", flush=True)
    agg = aggregate(per_run)
    result = {
        "benchmark": args.name, "runs": [str(r) for r in args.runs], "stride": args.stride,
        "threshold": args.threshold, "windows": ((64 - 32) // args.stride + 1) ** 2,
        "oracle": {"path": str(ORACLE_DIR.relative_to(REPO)), "classes": len(classes),
                   "judges": "one object per 32 px image (single-label, 72 classes): a scene is read window by window",
                   "cannot": "count objects, judge the scene whole, or say that a window holds no object other than by "
                             "a low top probability; objects split across windows or drawn off the 32 px scale of "
                             "the renders are read poorly (real_reference is the ceiling of this reading)"},
        "tuned_identical_to_base": [r.get("tuned_identical_to_base") for r in per_run],
        "tuning_exported": [None if r["tuning"] is None else r["tuning"]["exported"] for r in per_run],
        **agg, "per_run": per_run, "machine": machine(),
    }
    out = REPO / "benchmarks" / "results" / f"{args.name}.json"
    write_json(out, result)
    print(table(agg))
    print("filter agreement (oracle-complete rows among accepted vs rejected, percent):")
    for enc in ENCODERS:
        for rd in READINGS if agg.get(enc) else ():
            g = agg[enc][rd]["agreement"]
            print(f"  {enc} {rd}: {_ms(g['complete_if_accepted'])} vs {_ms(g['complete_if_rejected'])}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
