"""Stage 5: train the ZSL classifier on real seen + synthetic unseen images.

A frozen CLIP backbone (``classifier.backbone: clip``, the default) trains its head on cached
features in one Ray task (:func:`feature_worker`; one GPU on a cluster): the features of ``classifier.feature_views`` views of every real
seen training image and every synthetic image (view 0 clean, the others flipped and shifted) are
extracted once into ``OUT/features/`` and every epoch draws a random view per row, class-balanced by
stochastic replication. The recipe options of He et al. (2023) apply there: ``clip_filter`` (the
frozen CLIP judges the synthetic images), ``distill`` (a soft target toward the frozen CLIP's
zero-shot probabilities) and ``init_candidate`` (the untrained head competes in model selection).

A trainable backbone (``clip-finetune``, ``resnet18``) streams images instead: a Ray Data pipeline of
real seen trainval images (read from their files) and synthetic unseen images (read from the Parquet
shards, filtered by the keep thresholds, minus the held-out rows), unioned, class-balanced by
stochastic replication (the draw is seeded and fresh each epoch, see :func:`balance`) and fed in a
fixed order (``preserve_order``, seeded local shuffle) to ``TorchTrainer`` workers with
``iter_torch_batches``; synthetic images are never loaded whole. Flips and shifts augment on the worker.

Either way, early stopping and model selection use validation data only: held-out seen images (the
val split) and held-out synthetic images. Checkpoints every epoch (a state file of the task, or the
Ray Train run's checkpoints); a failed worker is retried and a rerun resumes.

Rank 0 writes ``<dir>/`` (weights, config.json, classes.json) and ``<dir>/scores.npz`` (softmax
scores of validation and test images) for the evaluation stage.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from digzsl_ray.distributed.faults import current_spec
from digzsl_ray.generation import is_validation_row, read_manifest
from digzsl_ray.io import write_npz
from digzsl_ray.methods.digzsl.variants import DCT, PLAIN_PROMPT, synthetic_variants
from digzsl_ray.stages.contract import Stage, file_sha
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")



# Ray Data functions (plain functions/classes: no ray import) ----------------------------------------
def load_real(batch: dict, size: int) -> dict:
    from digzsl_ray.images import load_images

    imgs = load_images([str(p) for p in batch["path"]], size)
    return {"image": imgs.permute(0, 2, 3, 1).numpy(), "label": np.asarray(batch["label"], dtype=np.int64)}


def decode_synthetic(batch: dict, size: int) -> dict:
    from digzsl_ray.images import decode_png_bytes

    imgs = decode_png_bytes([bytes(b) for b in batch["png"]], size)
    return {"image": imgs.permute(0, 2, 3, 1).numpy(), "label": np.asarray(batch["label"], dtype=np.int64)}


def above_threshold(name, score, thresholds: dict) -> bool:
    """Whether a synthetic row passes its class's keep threshold (``generate.keep_fraction``; None: all)."""
    thr = thresholds.get(str(name))
    return thr is None or float(score) >= thr


def keep_synthetic(batch: dict, thresholds: dict, val_fraction: float, want_val: bool) -> dict:
    """Rows above their class's keep threshold, and on the requested side of the validation split."""
    keep = []
    for name, score, seed in zip(batch["class_name"], batch["cdm_score"], batch["seed"]):
        ok = above_threshold(name, score, thresholds)
        keep.append(ok and is_validation_row(int(seed), val_fraction) == want_val)
    keep = np.asarray(keep, dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def read_shards(batch: dict, columns: list[str]) -> dict:
    """Rows of the Parquet shards named in ``batch["file"]`` (one small read per shard file).

    Reading shard files in a plain map (rather than ``read_parquet``) skips per-epoch file listing
    and metadata passes; the stream stays lazy, one shard at a time.
    """
    import pyarrow.parquet as pq

    tables = [pq.read_table(str(f), columns=columns) for f in batch["file"]]
    out: dict = {c: [] for c in columns}
    for t in tables:
        d = t.to_pydict()
        for c in columns:
            out[c].extend(d[c])
    return {c: np.asarray(v, dtype=object if c == "png" else None) for c, v in out.items()}


def balance(batch: dict, factors: dict[int, float], seed: int = 0) -> dict:
    """Class balance by stochastic replication: each row ``floor(r)`` times for sure and once more
    with probability ``frac(r)``, ``r = factors[label]``.

    The stream carries the candidate copies; each gets ``keep_p`` (1, or ``frac(r)`` for the extra
    copy) and ``keep_u``, a uniform number that is a pure function of the row's pixels and ``seed``
    (keyed BLAKE2b: independent across seeds, the same whatever the block boundaries, stream order or
    process). The worker keeps a copy in epoch ``e`` iff ``frac(keep_u + e * golden) < keep_p``
    (:func:`keep_mask`), so every epoch draws afresh and a run repeats itself.
    """
    import hashlib

    r = np.array([factors.get(int(y), 1.0) for y in batch["label"]], dtype=np.float64)
    whole = np.floor(r).astype(int)
    frac = r - whole
    images = np.asarray(batch["image"])
    key = int(seed).to_bytes(8, "little", signed=False)
    u = np.array([int.from_bytes(hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=8,
                                                 key=key).digest(), "little") / 2**64 for im in images])
    extra = frac > 0
    idx = np.concatenate([np.repeat(np.arange(len(r)), whole), np.nonzero(extra)[0]]).astype(int)
    p = np.concatenate([np.ones(int(whole.sum())), frac[extra]])
    # copies of one row must not share their draw: shift the extra copy's number
    uu = np.concatenate([np.repeat(u, whole), (u[extra] + 0.5) % 1.0])
    order = np.argsort(idx, kind="stable")
    out = {k: np.asarray(v)[idx[order]] for k, v in batch.items()}
    out["keep_p"] = p[order].astype(np.float32)
    out["keep_u"] = uu[order]
    return out


GOLDEN = 0.6180339887498949


def keep_mask(keep_u, keep_p, epoch: int) -> np.ndarray:
    """Which copies of :func:`balance` an epoch trains on (a low-discrepancy draw per epoch)."""
    u = (np.asarray(keep_u, dtype=np.float64) + epoch * GOLDEN) % 1.0
    return u < np.asarray(keep_p, dtype=np.float64)


def _ordered_ingest():
    """Ray Train's default ingest options with ``preserve_order``, built without the deprecated
    ``exclude_resources`` that ``DataConfig.default_ingest_options()`` still sets (a
    RayDeprecationWarning per trainer)."""
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True,
                            verbose_progress=current.verbose_progress)


# The worker -------------------------------------------------------------------------------------
def _run_val(model, val_shard, num_classes: int, device) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean per-class accuracy of ``model`` on the validation shard, with its softmax scores and labels."""
    import torch

    from digzsl_ray.metrics.zsl import mean_per_class_accuracy

    model.eval()
    ys, ps = [], []
    with torch.no_grad():
        for b in val_shard.iter_torch_batches(batch_size=512, dtypes={"image": torch.uint8, "label": torch.int64},
                                              device="cpu"):
            x = b["image"].permute(0, 3, 1, 2).to(device)
            ps.append(model(x).softmax(-1).cpu().numpy())
            ys.append(b["label"].numpy())
    if not ys:
        return 0.0, np.zeros((0, num_classes)), np.zeros(0, dtype=np.int64)
    y, p = np.concatenate(ys), np.concatenate(ps)
    return mean_per_class_accuracy(y, p.argmax(1), sorted(set(y.tolist()))), p, y


def _stream_epoch(ddp, opt, train_shard, c, seed: int, epoch: int, gen, device) -> tuple[float, int]:
    """One epoch over this worker's balanced stream (each row kept with its ``keep_p``); returns the
    summed loss and the rows trained on."""
    import torch

    from digzsl_ray.images import augment

    tot, n = 0.0, 0
    for b in train_shard.iter_torch_batches(batch_size=c.batch_size, local_shuffle_buffer_size=4 * c.batch_size,
                                            local_shuffle_seed=seed * 10_007 + epoch,
                                            dtypes={"image": torch.uint8, "label": torch.int64,
                                                    "keep_p": torch.float32, "keep_u": torch.float64},
                                            device="cpu"):
        keep = torch.from_numpy(keep_mask(b["keep_u"].numpy(), b["keep_p"].numpy(), epoch))
        if not bool(keep.any()):  # never an empty step (workers step in lockstep under DDP)
            keep[0] = True
        b = {"image": b["image"][keep], "label": b["label"][keep]}
        x = b["image"].permute(0, 3, 1, 2)
        if c.augment:
            x = augment(x, gen)
        logits = ddp(x.to(device))
        loss = torch.nn.functional.cross_entropy(logits, b["label"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(x)
        n += len(x)
    return tot, n


def _score_paths(model, paths: list[str], num_classes: int, device) -> np.ndarray:
    """Softmax scores of ``model`` on the images at ``paths`` (256 at a time)."""
    import torch

    from digzsl_ray.images import load_images

    chunks = []
    with torch.no_grad():
        for i in range(0, len(paths), 256):
            x = load_images(paths[i : i + 256], model.image_size).to(device)
            chunks.append(model(x).softmax(-1).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, num_classes))


def _write_outputs(config: dict, cfg, model, val_shard, num_classes: int, best: float, history: list,
                   device) -> None:
    """Step 3 of :func:`classifier_worker` (rank 0, best weights loaded): scores of the validation and
    test images -> ``config["scores"]``, the classifier -> ``config["out"]``."""
    from digzsl_ray.classifier import save_classifier

    out = Path(config["out"])
    _, p_val, y_val = _run_val(model, val_shard, num_classes, device)
    t = config["test"]
    arrays = {"val_scores": p_val, "val_labels": y_val,
              "test_seen_scores": _score_paths(model, t["test_seen"]["paths"], num_classes, device),
              "test_seen_labels": np.asarray(t["test_seen"]["labels"], dtype=np.int64),
              "test_unseen_scores": _score_paths(model, t["test_unseen"]["paths"], num_classes, device),
              "test_unseen_labels": np.asarray(t["test_unseen"]["labels"], dtype=np.int64)}
    write_npz(config["scores"], **arrays)
    save_classifier(out, model, config["classes"], config["seen"], config["unseen"], cfg.models,
                    extra={"variant": config["variant"], "best_val_acc": best, "history": history,
                           "fingerprint": config["fingerprint"]})


def classifier_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.classifier import build_classifier, param_groups
    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.methods.digzsl.config import DigzslRunConfig

    quiet_train_worker_logs()
    # 1. Config, device, model.
    cfg = DigzslRunConfig.model_validate(config["cfg"])
    c = cfg.classifier
    torch.set_num_threads(cfg.models.torch_threads)
    torch.manual_seed(cfg.seed)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    num_classes = len(config["classes"])
    protos = None
    if c.head == "prototypes":
        from digzsl_ray.prototypes import load_prototypes

        protos = load_prototypes(config["prototypes"])[0]
    model = build_classifier(c, cfg.models, num_classes, device, prototypes=protos)
    ddp = ray.train.torch.prepare_model(model) if ctx.get_world_size() > 1 else model
    opt = torch.optim.AdamW(param_groups(model, c.lr, c.weight_decay))
    start, best, best_state, since, history = 0, -1.0, None, 0, []
    st = restore_state()
    if st:
        model.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        start, best, best_state, since, history = st["epoch"] + 1, st["best"], st["best_state"], st["since"], st["history"]
        history.append({"resumed_at_epoch": start})
        if since >= c.patience:  # it had stopped early; resuming must not train further
            start = c.epochs

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    gen = torch.Generator().manual_seed(cfg.seed + rank)

    # 2. Epochs over the balanced stream; validation on held-out data; checkpoints.
    for epoch in range(start, c.epochs):
        model.train()
        maybe_fail("classifier", spec=config.get("fault", ""), epoch=epoch)
        gen.manual_seed(cfg.seed * 7919 + rank * 101 + epoch)  # a resumed epoch augments as the first try did
        tot, n = _stream_epoch(ddp, opt, train_shard, c, cfg.seed, epoch, gen, device)
        acc, _, _ = _run_val(model, val_shard, num_classes, device)
        improved = acc > best
        if improved:
            best, since = acc, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.trainable_state().items()}
        else:
            since += 1
        history.append({"epoch": epoch, "loss": round(tot / max(n, 1), 5), "val_acc": round(acc, 3), "rows": n})
        metrics = {"epoch": epoch, "loss": tot / max(n, 1), "val_acc": acc, "best_val_acc": best}
        state = {"model": model.trainable_state(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                 "best_state": best_state, "since": since, "history": history}
        report_state(metrics, state, rank)
        if since >= c.patience:
            break

    # 3. Rank 0: best weights, scores of validation and test images.
    if rank == 0:
        model.load_state_dict(best_state, strict=False)
        model.eval()
        _write_outputs(config, cfg, model, val_shard, num_classes, best, history, device)


def read_synthetic_rows(files: list[str], thresholds: dict, val_fraction: float) -> dict:
    """Every synthetic row of the shard ``files`` above its class's keep threshold: ``png``, ``label``
    and ``held`` (the held-out validation rows)."""
    import pyarrow.parquet as pq

    out: dict = {"png": [], "label": [], "held": []}
    for f in files:
        t = pq.read_table(str(f), columns=["png", "label", "class_name", "cdm_score", "seed"]).to_pydict()
        for png, y, name, score, seed in zip(t["png"], t["label"], t["class_name"], t["cdm_score"], t["seed"]):
            if above_threshold(name, score, thresholds):
                out["png"].append(png)
                out["label"].append(int(y))
                out["held"].append(is_validation_row(int(seed), val_fraction))
    return {"png": out["png"], "label": np.asarray(out["label"], dtype=np.int64),
            "held": np.asarray(out["held"], dtype=bool)}


def _feature_sets(config: dict, cfg, clip, protos, unseen: list, progress: bool) -> dict:
    """Step 2 of :func:`feature_worker`: features of every view of the real seen training images and
    the synthetic images (CLIP-filtered when ``classifier.clip_filter``), the distillation teacher's
    logits, the validation features (real seen val + held-out synthetic) and the class factors."""
    import torch

    from digzsl_ray.features import clip_filter, zero_shot_logits
    from digzsl_ray.methods.digzsl.head import class_factors

    c = cfg.classifier
    views = c.feature_views if c.augment else 1
    real = config["real"]
    f_real = clip.of_paths(real["paths"], views=views, seed=cfg.seed, progress=progress, desc="real features")
    y_real = np.asarray(real["labels"], dtype=np.int64)
    syn = read_synthetic_rows(config["files"], config["thresholds"], c.synthetic_val_fraction)
    tr = np.flatnonzero(~syn["held"])
    f_syn = clip.of_pngs([syn["png"][i] for i in tr], views=views, seed=cfg.seed + 1, progress=progress,
                         desc="synthetic features")
    y_syn = syn["label"][tr]
    filtered = None
    if c.clip_filter and len(tr):
        keep = clip_filter(zero_shot_logits(f_syn[0], protos, clip.scale), y_syn, unseen)
        filtered = {"kept": int(keep.sum()), "of": int(len(keep))}
        f_syn, y_syn = f_syn[:, torch.from_numpy(keep)], y_syn[keep]
    feats = torch.cat([f_real, f_syn], dim=1)
    labels = torch.as_tensor(np.concatenate([y_real, y_syn]))
    teacher = None
    if c.distill > 0:
        teacher = torch.stack([torch.from_numpy(zero_shot_logits(feats[v], protos, clip.scale))
                               for v in range(feats.shape[0])])
    held = np.flatnonzero(syn["held"])
    f_val = torch.cat([clip.of_paths(config["val"]["paths"])[0], clip.of_pngs([syn["png"][i] for i in held])[0]])
    y_val = np.concatenate([np.asarray(config["val"]["labels"], dtype=np.int64), syn["label"][held]])
    factors = class_factors(labels)
    return {"feats": feats, "labels": labels, "teacher": teacher, "f_val": f_val, "y_val": y_val,
            "factors": factors, "filtered": filtered}


def _write_feature_outputs(config: dict, cfg, model, clip, n_classes: int, f_val, y_val: np.ndarray, best: float,
                           history: list, filtered) -> None:
    """Step 5 of :func:`feature_worker` (best weights loaded): scores of the validation and test
    images -> ``config["scores"]``, the classifier -> ``config["out"]``."""
    import torch

    from digzsl_ray.classifier import save_classifier
    from digzsl_ray.methods.digzsl.head import head_logits

    head = model.head

    def scores(f) -> np.ndarray:
        with torch.no_grad():
            return head_logits(head, f).softmax(-1).cpu().numpy() if len(f) else np.zeros((0, n_classes))

    t = config["test"]
    arrays = {"val_scores": scores(f_val), "val_labels": y_val,
              "test_seen_scores": scores(clip.of_paths(t["test_seen"]["paths"])[0]),
              "test_seen_labels": np.asarray(t["test_seen"]["labels"], dtype=np.int64),
              "test_unseen_scores": scores(clip.of_paths(t["test_unseen"]["paths"])[0]),
              "test_unseen_labels": np.asarray(t["test_unseen"]["labels"], dtype=np.int64)}
    out = Path(config["out"])
    write_npz(config["scores"], **arrays)
    save_classifier(out, model, config["classes"], config["seen"], config["unseen"], cfg.models,
                    extra={"variant": config["variant"], "best_val_acc": best, "history": history,
                           "fingerprint": config["fingerprint"], "clip_filter": filtered,
                           "trained_on": "cached frozen-CLIP features"})


def feature_worker(config: dict) -> dict:
    """The classifier of a frozen CLIP backbone, one Ray task (one GPU on a cluster): the head trains
    on cached features.

    The tower never changes, so the features of ``classifier.feature_views`` views of every image are
    extracted once (cached in ``OUT/features/``, shared by the variants and a rerun) and the epochs run
    on those tensors: the same maths as the streaming worker with the image pipeline taken out. A
    head over features trains in seconds, so it runs as one task rather than a Ray Train worker group
    (whose start-up alone costs more than the training here). The task checkpoints its state every
    epoch to ``config["state"]``; Ray retries a failed task (``workers.max_failures``) and the retry
    resumes from that file, which is removed once the outputs are written.
    """
    import torch

    from digzsl_ray.classifier import build_classifier
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.features import FrozenCLIP
    from digzsl_ray.io import atomic_path
    from digzsl_ray.methods.digzsl.config import DigzslRunConfig
    from digzsl_ray.methods.digzsl.head import train_epoch, validate
    from digzsl_ray.models.presets import load_clip, pick_device
    from digzsl_ray.prototypes import load_prototypes

    # 1. Config, device, the frozen CLIP, the model.
    cfg = DigzslRunConfig.model_validate(config["cfg"])
    c = cfg.classifier
    torch.set_num_threads(cfg.models.torch_threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.models.device)
    protos = load_prototypes(config["prototypes"])[0]
    clip_model = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)[0]
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, device, cache_dir=config["features"],
                      model=clip_model)
    model = build_classifier(c, cfg.models, len(config["classes"]), device,
                             prototypes=protos if c.head == "prototypes" else None, clip_model=clip_model)
    head = model.head
    unseen = list(config["unseen"])
    progress = bool(config.get("progress", True))

    # 2. Features of every view of the real seen training images and the synthetic images, and of
    #    the validation images (real seen val + held-out synthetic), once.
    fs = _feature_sets(config, cfg, clip, protos, unseen, progress)
    feats, labels, teacher, factors = fs["feats"], fs["labels"], fs["teacher"], fs["factors"]
    f_val, y_val = fs["f_val"], fs["y_val"]

    # 3. Optimiser, resume, the initial head as a candidate.
    opt = torch.optim.AdamW(head.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    start, best, best_state, since, history = 0, -1.0, None, 0, []
    state_file = Path(config["state"])
    if state_file.is_file():
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        start, best, best_state, since, history = st["epoch"] + 1, st["best"], st["best_state"], st["since"], st["history"]
        history.append({"resumed_at_epoch": start})
        if since >= c.patience:  # it had stopped early; resuming must not train further
            start = c.epochs
    elif c.init_candidate:
        best, _ = validate(head, f_val, y_val)
        best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        history.append({"epoch": -1, "val_acc": round(best, 3), "initial": True})

    # 4. Epochs over the cached features; validation; a checkpoint per epoch.
    gen = torch.Generator()
    for epoch in range(start, c.epochs):
        maybe_fail("classifier", spec=config.get("fault", ""), epoch=epoch)
        gen.manual_seed(cfg.seed * 7919 + epoch)  # a resumed epoch draws as the first try did
        loss, n = train_epoch(head, feats, labels, factors, opt, c.batch_size, gen, teacher, c.distill,
                              c.distill_temperature, device)
        acc, _ = validate(head, f_val, y_val)
        if acc > best:
            best, since = acc, 0
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        else:
            since += 1
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_acc": round(acc, 3), "rows": n})
        state_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_file) as tmp:
            torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                        "best_state": best_state, "since": since, "history": history}, tmp)
        if since >= c.patience:
            break

    # 5. Best weights, scores of validation and test images.
    head.load_state_dict(best_state)
    head.eval()
    _write_feature_outputs(config, cfg, model, clip, len(protos), f_val, y_val, best, history, fs["filtered"])
    state_file.unlink(missing_ok=True)
    try:
        state_file.parent.rmdir()
    except OSError:
        pass
    return {"best_val_acc": best, "epochs": sum(1 for h in history if h.get("epoch", -1) >= 0)}


# Driver -----------------------------------------------------------------------------------------
def _synthetic_counts(files: list[str], thresholds: dict, val_fraction: float) -> dict[int, int]:
    """Training rows per class after filtering (reads only the small columns, never the images)."""
    import pyarrow.parquet as pq

    counts: dict[int, int] = {}
    for f in files:
        t = pq.read_table(f, columns=["label", "class_name", "cdm_score", "seed"]).to_pydict()
        kept = keep_synthetic({k: np.asarray(v) for k, v in t.items()}, thresholds, val_fraction, want_val=False)
        for y in kept["label"]:
            counts[int(y)] = counts.get(int(y), 0) + 1
    return counts


class ClassifierStage(Stage):
    name = "train-classifier"
    help = ("train the ZSL classifier on real seen + synthetic unseen images (a frozen CLIP: its head on cached "
            "features in a Ray task; a trainable backbone: Ray Train fed by Ray Data) "
            "-> OUT/classifier/")
    writes = {DCT: "classifier", f"{DCT}_scores": "classifier/scores.npz",
              PLAIN_PROMPT: "ablation/plain_prompt/classifier",
              f"{PLAIN_PROMPT}_scores": "ablation/plain_prompt/classifier/scores.npz"}
    reads = ("prototypes:prototypes",)
    depends_on = ("classifier", "models.clip", "models.clip_pretrained", "seed", "data.val_fraction",
                  "data.val_seed")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--variant", default="all", choices=["all", DCT, PLAIN_PROMPT],
                            help="which synthetic set to train with (default: all configured variants)")

    def variants(self, ctx) -> list[str]:
        chosen = getattr(ctx.args, "variant", "all") if ctx.args is not None else "all"
        return synthetic_variants(ctx.cfg) if chosen == "all" else [chosen]

    def required(self, ctx) -> tuple[str, ...]:
        return tuple(self.reads) + tuple(f"generate:{v}_manifest" for v in self.variants(ctx))

    def variant_fingerprint(self, ctx, variant: str) -> str:
        return self.fingerprint(ctx, variant, file_sha(ctx.path(f"generate:{variant}_manifest")))

    def variant_complete(self, ctx, variant: str) -> bool:
        d = ctx.path(f"train-classifier:{variant}")
        if not (all((d / f).is_file() for f in ("weights.safetensors", "config.json", "classes.json"))
                and ctx.path(f"train-classifier:{variant}_scores").is_file()):
            return False
        return json.loads((d / "config.json").read_text()).get("fingerprint") == self.variant_fingerprint(ctx, variant)

    def complete(self, ctx) -> bool:
        return all(self.variant_complete(ctx, v) for v in self.variants(ctx))

    def cached(self, ctx) -> list[str]:
        return [str(ctx.path(f"train-classifier:{v}")) for v in self.variants(ctx)]

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.digzsl.curves import classifier_curves

        return classifier_curves(ctx)

    def describe(self, ctx, result) -> str:
        return "\n".join(result)

    def run(self, ctx) -> list[str]:
        out = []
        for v in self.variants(ctx):
            if self.variant_complete(ctx, v):
                log.info("classifier %s: complete, skipped", v)
            else:
                self.train(ctx, v)
            out.append(str(ctx.path(f"train-classifier:{v}")))
        return out

    def train(self, ctx, variant: str) -> Path:
        """Train the classifier on real seen + the ``variant``'s synthetic images."""
        import ray
        from ray.train import DataConfig

        from digzsl_ray.classifier import input_size
        from digzsl_ray.distributed.trainloop import fit, make_trainer

        cfg, split, rd = ctx.cfg, ctx.split, ctx.rd
        out = ctx.path(f"train-classifier:{variant}")
        ctx.require(f"generate:{variant}_manifest")
        prototypes = ctx.require("prototypes:prototypes")
        fp = self.variant_fingerprint(ctx, variant)
        t0 = time.time()
        c = cfg.classifier
        sdir = ctx.path(f"generate:{variant}")
        manifest = read_manifest(sdir)
        files = [str(sdir / f) for f in manifest["shards"]]
        thresholds = manifest["keep_threshold"]
        test = {s: {"paths": [it.path for it in split.items[s]], "labels": [it.label for it in split.items[s]]}
                for s in ("test_seen", "test_unseen")}
        common = {"fault": current_spec(), "cfg": cfg.model_dump(mode="json"), "classes": list(split.classes),
                  "seen": list(split.seen), "unseen": list(split.unseen), "out": str(out), "variant": variant,
                  "test": test, "fingerprint": fp, "prototypes": str(prototypes),
                  "scores": str(ctx.path(f"train-classifier:{variant}_scores"))}
        w = c.workers
        if c.backbone == "clip":
            # A frozen tower: the head trains on cached features (feature_worker), no image stream.
            train_items = split.train_items()
            task = ray.remote(feature_worker).options(
                num_cpus=w.cpus_per_worker, num_gpus=1 if w.use_gpu else 0,
                max_retries=w.max_failures if w.max_failures >= 0 else -1, retry_exceptions=True)
            ray.get(task.remote(
                {**common, "files": files, "thresholds": thresholds, "features": str(rd.root / "features"),
                 "state": str(rd.ray_storage / f"classifier-{variant}-{fp}" / "state.pt"), "progress": ctx.progress,
                 "real": {"paths": [it.path for it in train_items], "labels": [it.label for it in train_items]},
                 "val": {"paths": [it.path for it in split.val], "labels": [it.label for it in split.val]}}))
            return self._done(ctx, variant, out, t0)
        size = input_size(cfg.models)

        # 1. Streams: real seen (train / val) and synthetic unseen (train / held out).
        train_items = split.train_items()
        real = ray.data.from_items([{"path": it.path, "label": it.label} for it in train_items])
        real = real.map_batches(load_real, fn_kwargs={"size": size}, batch_size=64)
        columns = ["png", "label", "class_name", "cdm_score", "seed"]
        synth = ray.data.from_items([{"file": f} for f in files], override_num_blocks=max(1, len(files))).map_batches(
            read_shards, fn_kwargs={"columns": columns}, batch_size=1, batch_format="numpy")
        synth_train = synth.map_batches(keep_synthetic, fn_kwargs={"thresholds": thresholds,
                                                                   "val_fraction": c.synthetic_val_fraction,
                                                                   "want_val": False}, batch_format="numpy")
        synth_val = synth.map_batches(keep_synthetic, fn_kwargs={"thresholds": thresholds,
                                                                 "val_fraction": c.synthetic_val_fraction,
                                                                 "want_val": True}, batch_format="numpy")
        synth_train = synth_train.map_batches(decode_synthetic, fn_kwargs={"size": size}, batch_format="numpy")
        synth_val = synth_val.map_batches(decode_synthetic, fn_kwargs={"size": size}, batch_format="numpy")
        real_val = ray.data.from_items([{"path": it.path, "label": it.label} for it in split.val])
        real_val = real_val.map_batches(load_real, fn_kwargs={"size": size}, batch_size=64)

        # 2. Class balance: every class ~ the mean class count per epoch.
        counts: dict[int, int] = {}
        for it in train_items:
            counts[it.label] = counts.get(it.label, 0) + 1
        counts.update(_synthetic_counts(files, thresholds, c.synthetic_val_fraction))
        target = float(np.mean(list(counts.values())))
        factors = {k: target / v for k, v in counts.items() if v}
        train = real.union(synth_train).map_batches(balance, fn_kwargs={"factors": factors, "seed": cfg.seed},
                                                    batch_format="numpy")
        # validation data is small (held-out fractions): computed once, not re-streamed every epoch
        val = real_val.union(synth_val).materialize()

        # 3. Ray Train.
        trainer = make_trainer(
            classifier_worker, common,
            name=f"classifier-{variant}-{fp}", storage=rd.ray_storage, num_workers=w.num_workers, use_gpu=w.use_gpu,
            cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures,
            datasets={"train": train, "val": val},
            # preserve_order: the stream (and with the seeded shuffle, every batch) repeats run to run
            dataset_config=DataConfig(datasets_to_split=["train"],
                                      execution_options=_ordered_ingest()))
        fit(trainer, cfg.ray.keep_checkpoints)
        return self._done(ctx, variant, out, t0)

    def _done(self, ctx, variant: str, out: Path, t0: float) -> Path:
        stage_timing(ctx.rd, f"classifier_{variant}", time.time() - t0)
        meta = json.loads((out / "config.json").read_text())
        log.info("classifier %s: best validation accuracy %.1f%% after %d epochs", variant, meta["best_val_acc"],
                 sum(1 for h in meta["history"] if "epoch" in h))
        return out
