"""multilabel_floor: which classifier design keeps what the frozen CLIP already knows (validation classes).

    python benchmarks/multilabel_floor.py [RUN] [--epochs 8] [--candidates NAME ...] [--name multilabel_floor]

RUN: a finished `digzsl run --config miniworld_multilabel` directory (default `/work/runs/ml-abl/seed-0`);
its config, split and prototypes are read, nothing in it is written. No Ray, CPU, one torch thread.

The selection protocol is the validation-class one (`digzsl_ray.data.split.validation_classes`): a
third as many seen labels as there are unseen ones are held out as pseudo-unseen. Training uses the
real trainval scenes holding none of them (asymmetric loss on the remaining seen columns, the stage's
own `_run_pass`); `valclass_mAP` is the mAP of every trainval scene holding a pseudo-unseen label on
the pseudo-unseen columns (the ZSL protocol, one level down); `val_seen_mAP` is the stage's selection
score (held-out real scenes, the remaining seen columns). Each candidate's epoch is the stage's own
choice (best `val_seen_mAP`, initial state included). Test ZSL mAP (the real unseen labels) is recorded
for the record only and chooses nothing. The floor (`clip_zero_shot`: class-token features against the
run's prototypes, no training) is scored on the same images.

Writes `benchmarks/results/<name>.json`: per candidate its settings, the history per epoch and the
selected epoch's figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# settings of each candidate on top of the run's classifier section
CANDIDATES = {
    "contexts": {"head": "contexts", "regions": "all"},  # DualCoOp, the reference's classifier
    "contexts_ctx_init": {"head": "contexts", "regions": "all", "ctx_init": "a photo of a"},
    "contexts_bias_class_token": {"head": "contexts", "regions": "class_token", "negative": "bias",
                                  "ctx_init": "a photo of a", "n_ctx": 4},
    "prototypes": {"head": "prototypes", "regions": "class_token"},
    "prototypes_no_branch": {"head": "prototypes", "regions": "class_token", "branch": False},
    "prototypes_reg": {"head": "prototypes", "regions": "class_token", "prototype_reg": 8.0},
    "prototypes_all_regions": {"head": "prototypes", "regions": "all"},
    "prototypes_s20": {"head": "prototypes", "regions": "class_token", "agg_scale": 1.0},
    "prototypes_s20_lr1e-2": {"head": "prototypes", "regions": "class_token", "agg_scale": 1.0, "lr": 1e-2},
    "prototypes_s20_reg": {"head": "prototypes", "regions": "class_token", "agg_scale": 1.0, "lr": 1e-2,
                           "prototype_reg": 8.0},
}


def _sets(split, vc: list[int]):
    vcs = set(vc)
    train = [it for it in split.train_items() if not vcs & set(it.labels)]
    val = [it for it in split.val if not vcs & set(it.labels)]
    pseudo = [it for it in list(split.train_items()) + list(split.val) if vcs & set(it.labels)]
    return train, val, pseudo


def main(argv: list[str] | None = None) -> dict:
    import torch

    from common import machine, save
    from digzsl_ray.config import load_yaml, validate_config
    from digzsl_ray.data import load_split
    from digzsl_ray.data.split import validation_classes
    from digzsl_ray.features import zero_shot_logits
    from digzsl_ray.images import load_images
    from digzsl_ray.methods.multilabel.classifier import MultiLabelCLIP, vit_regions
    from digzsl_ray.methods.multilabel.config import MultilabelRunConfig
    from digzsl_ray.methods.multilabel.stages import classifier as st
    from digzsl_ray.metrics.multilabel import mean_ap, multi_hot
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip
    from digzsl_ray.prototypes import load_prototypes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", default="/work/runs/ml-abl/seed-0")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    ap.add_argument("--name", default="multilabel_floor")
    ap.add_argument("--variants", nargs="*", default=["no_synthetic"],
                    help="no_synthetic, unfiltered, filtered, filtered_tuned: the run's synthetic images of the "
                         "variant are a second pass per epoch on the unseen columns, as in the stage")
    a = ap.parse_args(argv)
    run = Path(a.run)
    torch.set_num_threads(1)
    data = load_yaml(run / "config.yaml")
    for section in ("serve", "live"):  # runtime sections; older runs wrote keys that moved since
        data.pop(section, None)
    cfg = validate_config(data, MultilabelRunConfig, str(run / "config.yaml"))
    split = load_split(cfg.data, out=run, validate=False, progress=False)
    names, seen, unseen = list(split.classes), np.array(split.seen), np.array(split.unseen)
    vc = validation_classes(split, cfg.seed)
    seen_tr = np.array([s for s in seen if s not in set(vc)])
    train, val, pseudo = _sets(split, vc)
    protos = load_prototypes(run / "prototypes.safetensors")[0]
    print(f"{len(vc)} validation classes; train {len(train)}, val {len(val)}, pseudo-unseen {len(pseudo)} scenes")

    clip, _, tok = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device="cpu")
    size_probe = MultiLabelCLIP(clip, tok, names, 4, cfg.classifier.image_size, False)
    size = clip_image_size(clip)
    del size_probe
    mean, std = clip_norm(clip)
    lab = lambda items: multi_hot([list(it.labels) for it in items], len(names))  # noqa: E731
    x = {k: load_images([it.path for it in items], size) for k, items in
         (("train", train), ("val", val), ("pseudo", pseudo), ("test", split.items["test_unseen"]))}
    y = {k: lab(items) for k, items in (("train", train), ("val", val), ("pseudo", pseudo),
                                         ("test", split.items["test_unseen"]))}

    def figures(score_fn) -> dict:
        s = {k: score_fn(x[k]) for k in ("val", "pseudo", "test")}
        return {"val_seen_mAP": round(mean_ap(s["val"][:, seen_tr], y["val"][:, seen_tr], cfg.metrics.preset), 2),
                "valclass_mAP": round(mean_ap(s["pseudo"][:, vc], y["pseudo"][:, vc], cfg.metrics.preset), 2),
                "test_zsl_mAP": round(mean_ap(s["test"][:, unseen], y["test"][:, unseen], cfg.metrics.preset), 2)}

    # the floor: class-token features against the prototypes (the evaluate stage's clip_zero_shot)
    def floor_scores(xu8):
        with torch.no_grad():
            f = vit_regions(clip.visual, st._prep(xu8, mean, std, "cpu"), True)[:, 0]
        return zero_shot_logits(f.numpy(), protos, 100.0)

    out = {"run": str(run), "validation_classes": [names[v] for v in vc], "epochs": a.epochs,
           "floor": figures(floor_scores), "candidates": {}}
    print("floor", out["floor"])
    def _train(name, variant, xs, ys) -> dict:
        over = CANDIDATES[name]
        c = cfg.classifier.model_copy(update=over)
        torch.manual_seed(cfg.seed)
        clip, _, tok = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device="cpu")
        unit = torch.nn.functional.normalize(protos.float(), dim=-1)
        net = st.build_classifier(c, clip, tok, names, unit)
        anchor = (unit, c.prototype_reg) if c.prototype_reg else None
        opts = st.make_optimisers(net, c)
        score = lambda xu8: st._scores(net, xu8, len(names), mean, std, "cpu")  # noqa: E731
        hist = [{"epoch": -1, **figures(score)}]
        print(variant, name, hist[-1], flush=True)
        t0 = time.time()
        for epoch in range(a.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, epoch, 33]))
            loss = st._run_pass(net, net, opts, x["train"], y["train"], seen_tr, gen, rng, c, mean, std, "cpu",
                                anchor)
            if ys is not None and len(ys):
                st._run_pass(net, net, opts, xs, ys, unseen, gen, rng, c, mean, std, "cpu", anchor)
            hist.append({"epoch": epoch, "loss": round(loss, 4), **figures(score)})
            print(variant, name, hist[-1], f"{time.time() - t0:.0f}s", flush=True)
        best = max(hist, key=lambda r: r["val_seen_mAP"])
        best_vc = max(hist, key=lambda r: r["valclass_mAP"])
        return {"settings": over, "variant": variant, "synthetic_images": 0 if ys is None else len(ys),
                "history": hist, "selected_by_val_seen": best, "selected_by_valclass": best_vc}
    from digzsl_ray.images import decode_png_bytes
    from digzsl_ray.methods.multilabel.variants import SET_OF

    for variant in a.variants:
        xs = ys = None
        if variant != "no_synthetic":
            rows = st.synthetic_rows(run / "synthetic_ml" / SET_OF[variant], variant, names,
                                     cfg.classifier.synthetic_val_fraction)["train"]
            xs, ys = decode_png_bytes(rows["png"], size), multi_hot(rows["labels"], len(names))
            print(f"{variant}: {len(ys)} synthetic training images")
        for name in a.candidates:
            out["candidates"][f"{variant}/{name}"] = _train(name, variant, xs, ys)
    out["machine"] = machine()
    save(a.name, out)
    for n, r in out["candidates"].items():
        print(f"{n:28s} by val_seen: {r['selected_by_val_seen']}  by valclass: {r['selected_by_valclass']}")
    return out


if __name__ == "__main__":
    main()
