"""Stage: train the multi-label classifier of every variant on Ray Train -> ``OUT/classifier_ml/<variant>/``.

```
OUT/classifier_ml/<variant>/weights.safetensors     the text side (label weights and thresholds, or contexts) and fusion branches (all that trains)
OUT/classifier_ml/<variant>/config.json             CLIP, image size, n_ctx, scales, classes, history, fingerprint
OUT/classifier_ml/<variant>/classes.json            class names, seen and unseen indices (what serving reads)
OUT/classifier_ml/<variant>/scores.npz              probabilities (<split>_scores) and margins (<split>_margins) of validation and test images
```
Per epoch a worker makes one pass over its shard of the real seen training images (asymmetric loss
on the seen labels' columns) and, for the synthetic variants, one pass over the synthetic images
(loss on the unseen labels' columns): ``unfiltered`` takes every untuned image with its target
set, ``filtered`` the accepted ones with the labels the filter gave, ``filtered_tuned`` the same
from the tuned encoder's images. ``classifier.max_classes_per_batch`` subsamples the columns of a
batch (its positives plus random negatives) for large label spaces. Model selection on validation
data only and the same for every variant: the mAP of held-out real seen images (the val split, seen
columns); the mAP of held-out synthetic images (unseen columns) is logged beside it, not used (it
rests on a few images that differ between variants). Checkpoints every epoch; a failed worker
restarts from the last one.

Images are decoded into the worker's memory (its shard of them), fine for MiniWorld and COCO-sized
seen sets at 224 px on a GPU node; the single-label classifier's Ray Data streaming is the model
for a larger set.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from digzsl_ray.distributed.faults import current_spec
from digzsl_ray.generation import is_validation_row
from digzsl_ray.io import atomic_path, read_json, write_npz
from digzsl_ray.methods.multilabel.variants import NO_SYNTHETIC, SET_OF, UNFILTERED, variants
from digzsl_ray.metrics.multilabel import multi_hot
from digzsl_ray.stages.contract import Stage, file_sha
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def _items(items) -> dict:
    return {"paths": [it.path for it in items], "labels": [list(it.labels) for it in items]}


def synthetic_rows(d: Path, variant: str, names: list[str], val_fraction: float) -> dict:
    """The synthetic training and validation rows of a variant: png bytes and label index lists."""
    from digzsl_ray.methods.multilabel.generation import read_set

    t = read_set(d, ["png", "target_labels", "labels", "accepted", "seed"]).to_pydict()
    index = {n: i for i, n in enumerate(names)}
    out = {"train": {"png": [], "labels": []}, "val": {"png": [], "labels": []}}
    for png, tl, lab, acc, seed in zip(t["png"], t["target_labels"], t["labels"], t["accepted"], t["seed"]):
        if variant != UNFILTERED and not acc:
            continue
        side = "val" if is_validation_row(int(seed), val_fraction) else "train"
        out[side]["png"].append(png)
        out[side]["labels"].append([index[x] for x in (tl if variant == UNFILTERED else lab)])
    return out


def pick_columns(y: np.ndarray, columns: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Columns of a batch: all of ``columns``, or with ``cap`` its positives plus random negatives up to ``cap``."""
    if not cap or len(columns) <= cap:
        return columns
    pos = columns[y[:, columns].any(0)]
    neg = np.setdiff1d(columns, pos)
    extra = rng.choice(neg, size=max(0, min(len(neg), cap - len(pos))), replace=False)
    return np.sort(np.concatenate([pos, extra]))


def make_optimisers(net, c) -> list:
    """AdamW on the contexts at ``classifier.lr``; the fusion branches their own optimiser at
    ``classifier.branch_lr`` (the reference: SGD, contexts 2e-3, branch 1e-4), so the zero-started
    branch moves slowly away from the frozen features the unseen labels rely on."""
    import torch

    from digzsl_ray.methods.multilabel.fusion import branch_parameters

    opts = [torch.optim.AdamW(net.context_parameters(), lr=c.lr, weight_decay=c.weight_decay)]
    branch = branch_parameters(net.clip)
    if branch:
        if c.branch_optimizer == "sgd":
            opts.append(torch.optim.SGD(branch, lr=c.branch_lr, momentum=0.9, weight_decay=c.weight_decay))
        else:
            opts.append(torch.optim.AdamW(branch, lr=c.branch_lr, weight_decay=c.weight_decay))
    return opts


def _shard(n: int, rank: int, world: int) -> list[int]:
    """This worker's rows of ``n`` (equal-size shards, wrapping around)."""
    return [(rank + k * world) % n for k in range(-(-n // world))] if n else []


def _worker_images(config: dict, c, names: list[str], size: int, rank: int, world: int) -> dict:
    """Step 2 of :func:`classifier_worker`: this worker's shard of the real seen images and of the
    variant's synthetic images (``syn`` is None without them), and the validation images."""
    from digzsl_ray.images import decode_png_bytes, load_images

    data = config["data"]
    progress = rank == 0
    tr = _shard(len(data["train"]["paths"]), rank, world)
    d = {"x_real": load_images([data["train"]["paths"][i] for i in tr], size, progress, "real images"),
         "y_real": multi_hot([data["train"]["labels"][i] for i in tr], len(names)), "syn": None}
    if config.get("synthetic"):
        d["syn"] = synthetic_rows(Path(config["synthetic"]["dir"]), config["synthetic"]["variant"], names,
                                  c.synthetic_val_fraction)
    syn = d["syn"]
    if syn:
        ts = _shard(len(syn["train"]["png"]), rank, world)
        d["x_syn"] = decode_png_bytes([syn["train"]["png"][i] for i in ts], size)
        d["y_syn"] = multi_hot([syn["train"]["labels"][i] for i in ts], len(names))
        d["x_syn_val"] = decode_png_bytes(syn["val"]["png"], size)
        d["y_syn_val"] = multi_hot(syn["val"]["labels"], len(names))
    d["x_val"] = load_images(data["val"]["paths"], size)
    d["y_val"] = multi_hot(data["val"]["labels"], len(names))
    return d


def _prep(x_uint8, mean, std, device):
    from digzsl_ray.images import normalise

    return normalise(x_uint8.to(device).float() / 255.0, mean, std)


def _scores(net, x_uint8, n_classes: int, mean, std, device) -> np.ndarray:
    """Positive margins (log-odds, :func:`~digzsl_ray.methods.multilabel.classifier.positive_margin`)
    of ``net`` on uint8 images, 128 at a time (``net`` left in training mode). Rankings (mAP, top-k)
    use them; the probability is their sigmoid (:func:`probabilities`)."""
    import torch

    from digzsl_ray.methods.multilabel.classifier import positive_margin

    net.eval()
    out = []
    with torch.no_grad():
        text = net.text_features()
        for i in range(0, len(x_uint8), 128):
            out.append(positive_margin(net(_prep(x_uint8[i:i + 128], mean, std, device), text)).cpu().numpy())
    net.train()
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def probabilities(margins: np.ndarray) -> np.ndarray:
    """The positive probabilities (float32) of margins."""
    return (1.0 / (1.0 + np.exp(-np.clip(margins.astype(np.float64), -80, 80)))).astype(np.float32)


def _validate(net, d: dict, seen: np.ndarray, unseen: np.ndarray, preset, n_classes: int, mean, std,
              device) -> dict:
    """Held-out real seen mAP (the selection for every variant), and the held-out synthetic unseen mAP beside it."""
    from digzsl_ray.metrics.multilabel import mean_ap

    x_val, y_val, syn = d["x_val"], d["y_val"], d["syn"]
    v = {"val_seen_mAP": mean_ap(_scores(net, x_val, n_classes, mean, std, device)[:, seen], y_val[:, seen], preset)
         if len(y_val) else 0.0}
    if syn and len(d["y_syn_val"]):
        v["val_synthetic_unseen_mAP"] = mean_ap(_scores(net, d["x_syn_val"], n_classes, mean, std, device)[:, unseen],
                                                d["y_syn_val"][:, unseen], preset)
    v["selection"] = v["val_seen_mAP"]  # the same criterion for every variant: held-out real seen scenes
    return v


def prototype_penalty(net, anchor: tuple):
    """``weight * mean_c (1 - cos(positive text feature_c, prototype_c))`` over every label, unseen
    ones included, so the text side stays near what the class-name prompts already knew (KgCoOp's
    knowledge-guided term for learned contexts; for the prototype head, a pull of each label's weight
    back to its start). ``anchor``: ``(normalised prototypes [C, E], weight)``."""
    protos, weight = anchor
    pos = net.text_features()[0]
    return weight * (1 - (pos * protos.to(pos.dtype)).sum(-1)).mean()


def _run_pass(net, model, opts: list, x, y, columns, gen, rng, c, mean, std, device, anchor=None) -> float:
    """One pass of training over ``x`` (asymmetric loss on ``columns``, plus :func:`prototype_penalty`
    with ``anchor``); returns the mean batch loss."""
    import torch

    from digzsl_ray.methods.multilabel.classifier import positive_probability
    from digzsl_ray.methods.multilabel.losses import asymmetric_loss

    order = torch.randperm(len(x), generator=gen).tolist()
    total, n = 0.0, 0
    for i in range(0, len(order), c.batch_size):
        idx = order[i:i + c.batch_size]
        xb = x[idx]
        if c.augment:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
        cols = pick_columns(y[idx], columns, c.max_classes_per_batch, rng)
        cols_t = torch.as_tensor(cols, device=device)
        text = net.text_features(cols_t)
        prob = positive_probability(model(_prep(xb, mean, std, device), text))
        yb = torch.as_tensor(y[idx][:, cols], device=device)
        loss = asymmetric_loss(prob, yb, c.gamma_neg, c.gamma_pos, c.clip) / len(idx)
        if anchor is not None:
            loss = loss + prototype_penalty(net, anchor)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        total, n = total + float(loss.detach()), n + 1
    return total / max(1, n)


def _write_outputs(config: dict, cfg, net, d: dict, best: dict, best_state: dict, history: list, size: int,
                   mean, std, device) -> None:
    """Step 5 of :func:`classifier_worker` (rank 0, best weights loaded): scores of validation and test
    images, the weights, classes and config -> ``config["out"]``."""
    from safetensors.torch import save_file

    from digzsl_ray.images import load_images
    from digzsl_ray.io import write_json

    c, data, syn = cfg.classifier, config["data"], d["syn"]
    names, seen, unseen = config["classes"], np.array(config["seen"]), np.array(config["unseen"])
    n_classes = len(names)
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    margins = {"val": _scores(net, d["x_val"], n_classes, mean, std, device)}
    labels = {"val": d["y_val"]}
    if syn:
        margins["synthetic_val"] = _scores(net, d["x_syn_val"], n_classes, mean, std, device)
        labels["synthetic_val"] = d["y_syn_val"]
    for split in ("test_unseen", "test_seen"):
        margins[split] = _scores(net, load_images(data[split]["paths"], size, True, split), n_classes, mean, std,
                                 device)
        labels[split] = multi_hot(data[split]["labels"], len(names))
    arrays = {}
    for k in margins:  # probabilities (the served decision's scale), margins (what rankings use), labels
        arrays.update({f"{k}_scores": probabilities(margins[k]), f"{k}_margins": margins[k], f"{k}_labels": labels[k]})
    write_npz(out / "scores.npz", **arrays)
    with atomic_path(out / "weights.safetensors") as tmp:
        save_file(best_state, str(tmp))
    write_json(out / "classes.json", {"classes": names, "seen": seen.tolist(), "unseen": unseen.tolist()})
    write_json(out / "config.json", {
        "task": "multi_label", "method": "multilabel", "variant": config["variant"],
        "clip": cfg.models.clip, "clip_pretrained": cfg.models.clip_pretrained, "n_ctx": c.n_ctx,
        "image_size": size, "branch": c.branch, "logit_scale": c.logit_scale, "agg_scale": c.agg_scale,
        "head": c.head, "regions": c.regions, "negative": c.negative,
        "mean": list(mean), "std": list(std), "class_names": names, "seen": seen.tolist(),
        "unseen": unseen.tolist(), "best": best, "history": history,
        "synthetic_images": {"train": len(syn["train"]["png"]), "val": len(syn["val"]["png"])} if syn else None,
        "fingerprint": config["fingerprint"]})


def _prototypes(config: dict, names: list[str]):
    """The run's normalised prototypes ``[C, E]`` in the order of ``names`` (the stage passes their path)."""
    import torch.nn.functional as F

    from digzsl_ray.prototypes import load_prototypes

    protos, proto_names, _ = load_prototypes(config["prototypes"])
    if list(proto_names) != list(names):
        raise ValueError(f"{config['prototypes']}: its labels differ from the split's ({len(proto_names)} vs "
                         f"{len(names)}); rerun the prototypes stage")
    return F.normalize(protos.float(), dim=-1)


def build_classifier(c, clip, tokenizer, names: list[str], protos=None):
    """The classifier of the ``classifier`` section ``c`` on ``clip`` (``protos``: the run's prototypes,
    the prototype head's start)."""
    from digzsl_ray.methods.multilabel.classifier import MultiLabelCLIP

    return MultiLabelCLIP(clip, tokenizer, names, c.n_ctx, c.image_size, c.branch, c.logit_scale, c.agg_scale,
                          c.ctx_init, c.regions, c.negative, c.bias_init, c.head, protos)


def classifier_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.methods.multilabel.config import MultilabelRunConfig
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip

    # 1. Config, threads, device; the frozen CLIP with the contexts (and the fusion branches), optimisers.
    quiet_train_worker_logs()
    cfg = MultilabelRunConfig.model_validate(config["cfg"])
    c = cfg.classifier
    torch.set_num_threads(cfg.models.torch_threads)
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = ray.train.torch.get_device()
    names, seen, unseen = config["classes"], np.array(config["seen"]), np.array(config["unseen"])
    torch.manual_seed(cfg.seed)

    clip, _, tokenizer = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)
    mean, std = clip_norm(clip)
    protos = _prototypes(config, names)
    net = build_classifier(c, clip, tokenizer, names, protos).to(device)
    anchor = (protos.to(device), c.prototype_reg) if c.prototype_reg else None
    size = clip_image_size(clip)
    model = ray.train.torch.prepare_model(net) if world > 1 else net
    opts = make_optimisers(net, c)

    # 2. This worker's shard of the real seen images and of the variant's synthetic images; validation images.
    d = _worker_images(config, c, names, size, rank, world)
    syn = d["syn"]

    # 3. Epochs (resumed from the last checkpoint after a failure): a real pass, a synthetic pass (_run_pass),
    #    validation (_validate: held-out real seen mAP, the selection for every variant), early stop after
    #    classifier.patience epochs without improvement.
    start, best, best_state, history, stale = 0, None, None, [], 0
    st = restore_state()
    if st:
        net.load_state_dict(st["trainable"], strict=False)
        for o, o_state in zip(opts, st["opt"]):
            o.load_state_dict(o_state)
        start, best, best_state, history, stale = st["epoch"] + 1, st["best"], st["best_state"], st["history"], st["stale"]
        history.append({"resumed_at_epoch": start})
    for epoch in range(start, c.epochs):
        if stale >= c.patience:
            break
        maybe_fail("classifier", spec=config.get("fault", ""), epoch=epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank * 101 + epoch)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, rank, epoch, 33]))
        row = {"epoch": epoch,
               "loss_real": _run_pass(net, model, opts, d["x_real"], d["y_real"], seen, gen, rng, c, mean, std, device,
                                      anchor)}
        if syn and len(d["x_syn"]):
            row["loss_synthetic"] = _run_pass(net, model, opts, d["x_syn"], d["y_syn"], unseen, gen, rng, c, mean, std,
                                              device, anchor)
        row.update(_validate(net, d, seen, unseen, cfg.metrics.preset, len(names), mean, std, device))
        if best is None or row["selection"] > best["selection"]:
            best, best_state, stale = dict(row), net.trainable_state(), 0
        else:
            stale += 1
        history.append(row)
        report_state({k: v for k, v in row.items()}, {"trainable": net.trainable_state(),
                                                      "opt": [o.state_dict() for o in opts],
                                                      "epoch": epoch, "best": best, "best_state": best_state,
                                                      "history": history, "stale": stale}, rank)

    # 4. Rank 0: the best epoch's weights, scores of validation and test images -> OUT/classifier_ml/<variant>/.
    if rank == 0:
        net.load_state_dict(best_state, strict=False)
        _write_outputs(config, cfg, net, d, best, best_state, history, size, mean, std, device)


class ClassifierStage(Stage):
    name = "train-classifier"
    help = "train the multi-label classifier (contexts + fusion branch) of every variant (Ray Train) -> OUT/classifier_ml/"
    writes = {"dir": "classifier_ml", "no_synthetic": "classifier_ml/no_synthetic",
              "unfiltered": "classifier_ml/unfiltered", "filtered": "classifier_ml/filtered",
              "filtered_tuned": "classifier_ml/filtered_tuned"}
    requires = ("generate:base_manifest", "prototypes:prototypes")
    depends_on = ("classifier", "metrics.preset", "models.clip", "models.clip_pretrained", "seed", "data.val_fraction",
                  "data.val_seed")

    def variant_fingerprint(self, ctx, variant: str) -> str:
        src = ""
        if variant in SET_OF:
            m = ctx.path(f"generate:{SET_OF[variant]}_manifest")
            src = file_sha(m)
        return self.fingerprint(ctx, variant, src, file_sha(ctx.path("prototypes:prototypes")))

    def _done(self, ctx, variant: str) -> bool:
        d = ctx.path(f"train-classifier:{variant}")
        return (all((d / f).is_file() for f in ("scores.npz", "config.json", "classes.json", "weights.safetensors"))
                and read_json(d / "config.json").get("fingerprint") == self.variant_fingerprint(ctx, variant))

    def complete(self, ctx) -> bool:
        return all(self._done(ctx, v) for v in variants(ctx.cfg))

    def cached(self, ctx) -> dict:
        return {v: read_json(ctx.path(f"train-classifier:{v}") / "config.json")["best"] for v in variants(ctx.cfg)}

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.multilabel.curves import classifier_curves

        return classifier_curves(ctx)

    def describe(self, ctx, result) -> str:
        return json.dumps({v: round(b["selection"], 2) for v, b in result.items()})

    def run(self, ctx) -> dict:
        from digzsl_ray.distributed.trainloop import fit, make_trainer

        cfg, split = ctx.cfg, ctx.split
        data = {"train": _items(split.train_items()), "val": _items(split.val),
                "test_unseen": _items(split.items["test_unseen"]), "test_seen": _items(split.items["test_seen"])}
        for v in variants(cfg):
            if self._done(ctx, v):
                log.info("train-classifier %s: complete, skipped", v)
                continue
            t0 = time.time()
            fp = self.variant_fingerprint(ctx, v)
            syn = None if v == NO_SYNTHETIC else {"dir": str(ctx.require(f"generate:{SET_OF[v]}")), "variant": v}
            w = cfg.classifier.workers
            trainer = make_trainer(classifier_worker, {
                "fault": current_spec(), "cfg": cfg.model_dump(mode="json"), "classes": list(split.classes),
                "seen": list(split.seen), "unseen": list(split.unseen), "data": data, "synthetic": syn,
                "out": str(ctx.path(f"train-classifier:{v}")), "fingerprint": fp, "variant": v,
                "prototypes": str(ctx.require("prototypes:prototypes"))},
                name=f"classifier-ml-{v}-{fp}", storage=ctx.rd.ray_storage, num_workers=w.num_workers,
                use_gpu=w.use_gpu, cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures, keep=1)
            fit(trainer, cfg.ray.keep_checkpoints)
            best = read_json(ctx.path(f"train-classifier:{v}") / "config.json")["best"]
            stage_timing(ctx.rd, f"classifier_{v}", time.time() - t0)
            log.info("train-classifier %s: best epoch %d, validation %s", v, best["epoch"],
                     {k: round(x, 2) for k, x in best.items() if k.startswith("val")})
        return self.cached(ctx)
