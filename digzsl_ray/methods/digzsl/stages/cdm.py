"""Stage 2: train the CDM on seen classes with Ray Train -> ``OUT/cdm/``.

The worker extracts frozen-CLIP features once (clean view + augmented views), trains the projection
with cross-entropy over seen classes, checkpoints every epoch (Ray Train storage under OUT/ray)
and keeps the epoch with the best accuracy on held-out *trainval* images (the val split). After a
worker failure Ray Train restarts the worker from the last checkpoint (``max_failures``); a rerun
of a finished stage is skipped. Rank 0 writes OUT/cdm/ (weights, config.json, scores.npz); the
driver writes OUT/cdm/metrics.json, the "no synthetic data" baseline.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from digzsl_ray.data.split import validation_classes
from digzsl_ray.distributed.faults import current_spec
from digzsl_ray.io import write_json, write_npz
from digzsl_ray.metrics.zsl import gzsl, zsl_top1
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")



def _items_payload(items) -> dict:
    return {"paths": [it.path for it in items], "labels": [it.label for it in items]}


def _val_accuracy(head, f_val, y_val: np.ndarray, columns: np.ndarray, device) -> float:
    """Top-1 accuracy (percent) of ``head`` on validation features, the argmax over ``columns`` only."""
    from digzsl_ray.methods.digzsl.cdm import head_scores

    if not len(y_val):
        return 0.0
    scores = head_scores(head, f_val, device).numpy()
    return float((columns[scores[:, columns].argmax(1)] == y_val).mean() * 100)


def _snapshot(head) -> dict:
    return {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}


def _shard_features(config: dict, cfg, clip_model, size: int, mean, std, pos: dict, rank: int, world: int, device):
    """Step 3 of :func:`cdm_worker`: CLIP features of this worker's shard of the training images
    (``views`` augmented views each) and of the validation images; returns
    ``(f_train, y_train, tr_labels, f_val, y_val)``."""
    import torch

    from digzsl_ray.images import load_images
    from digzsl_ray.methods.digzsl.cdm import extract_features

    data = config["data"]
    # equal-size shards (wrapping around), so every worker runs the same number of synchronised steps
    n = len(data["train"]["paths"])
    idx = [(rank + k * world) % n for k in range(-(-n // world))]
    tr_paths = [data["train"]["paths"][i] for i in idx]
    tr_labels = [data["train"]["labels"][i] for i in idx]
    progress = rank == 0
    views = 3 if cfg.cdm.augment else 1
    f_train = extract_features(clip_model, load_images(tr_paths, size, progress), size, mean, std, device,
                               views=views, seed=cfg.seed + rank, progress=progress)
    y_train = torch.tensor([pos[lab] for lab in tr_labels])
    f_val = extract_features(clip_model, load_images(data["val"]["paths"], size), size, mean, std, device)[0]
    y_val = np.array(data["val"]["labels"])
    return f_train, y_train, tr_labels, f_val, y_val


def _valclass_head(config: dict, cfg, protos, seen, f_train, tr_labels, f_val, y_val: np.ndarray, gen,
                   rank: int, world: int, device):
    """Step 6 of :func:`cdm_worker`: the head of the validation-class protocol, trained without the
    validation classes V and chosen on the validation images of the other seen classes; ``None``
    when there is no V (or V is every seen class)."""
    import ray.train.torch
    import torch

    from digzsl_ray.methods.digzsl.cdm import CDMHead, train_epoch

    c = cfg.cdm
    vset = [int(v) for v in config.get("val_classes", [])]
    in_v = set(vset)
    if not (vset and len(vset) < len(seen)):
        return None
    data = config["data"]
    n = len(data["train"]["paths"])
    keep_cols = torch.tensor([int(s) for s in seen.tolist() if int(s) not in in_v])
    kpos = {int(s): i for i, s in enumerate(keep_cols.tolist())}
    mine = [i for i, lab in enumerate(tr_labels) if int(lab) in kpos]
    # every worker steps the same number of times (DDP): wrap this shard's rows to the longest shard's
    labels_all = data["train"]["labels"]
    longest = max(sum(int(labels_all[(r + k * world) % n]) in kpos for k in range(-(-n // world)))
                  for r in range(world))
    rows = torch.tensor([mine[k % len(mine)] for k in range(longest)] if mine else [], dtype=torch.long)
    torch.manual_seed(cfg.seed + 50_000)  # its initialisation does not depend on what ran before
    aux = CDMHead(protos, f_train.shape[-1], c.hidden_dim, c.temperature)
    aux_model = ray.train.torch.prepare_model(aux)
    aux_opt = torch.optim.AdamW(aux_model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    y_aux = torch.tensor([kpos[int(tr_labels[i])] for i in rows.tolist()])
    vmask = np.isin(y_val, keep_cols.numpy())
    aux_best, aux_state = -1.0, None
    for epoch in range(c.epochs):
        gen.manual_seed(cfg.seed * 7919 + rank * 101 + epoch + 50_000)
        train_epoch(aux_model, f_train[:, rows], y_aux, keep_cols, aux_opt, c.batch_size, gen, device)
        acc = _val_accuracy(aux, f_val[vmask], y_val[vmask], keep_cols.numpy(), device)
        if acc > aux_best:
            aux_best, aux_state = acc, _snapshot(aux)
    aux.load_state_dict(aux_state)
    return aux


def _score_splits(config: dict, head, aux, clip_model, size: int, mean, std, n_classes: int, f_val,
                  y_val: np.ndarray, device) -> dict:
    """Step 7 of :func:`cdm_worker` (rank 0): the best head's scores of the val and test images, and
    with the validation-class head ``aux`` its pseudo-seen / pseudo-unseen scores (the arrays of
    ``cdm/scores.npz``)."""
    from digzsl_ray.images import load_images
    from digzsl_ray.methods.digzsl.cdm import extract_features, head_scores

    data = config["data"]
    vset = [int(v) for v in config.get("val_classes", [])]
    in_v = set(vset)

    def scores_of(split: str) -> np.ndarray:
        f = extract_features(clip_model, load_images(data[split]["paths"], size), size, mean, std, device)[0]
        return head_scores(head, f, device).numpy()

    arrays = {}
    for split in ("val", "test_seen", "test_unseen"):
        arrays[f"{split}_scores"] = scores_of(split) if data[split]["paths"] else np.zeros((0, n_classes))
        arrays[f"{split}_labels"] = np.array(data[split]["labels"], dtype=np.int64)
    if aux is not None:
        # pseudo-seen: val images of seen classes outside V; pseudo-unseen: every trainval image of V
        vm = ~np.isin(y_val, vset)
        arrays["valclass_seen_scores"] = head_scores(aux, f_val[vm], device).numpy()
        arrays["valclass_seen_labels"] = y_val[vm].astype(np.int64)
        vi = [i for i, lab in enumerate(data["val"]["labels"]) if int(lab) in in_v]
        v_paths = [p for p, lab in zip(data["train"]["paths"], data["train"]["labels"]) if int(lab) in in_v]
        v_labels = [int(lab) for lab in data["train"]["labels"] if int(lab) in in_v]
        fv = extract_features(clip_model, load_images(v_paths, size), size, mean, std, device)[0] \
            if v_paths else f_val[:0]
        arrays["valclass_unseen_scores"] = np.concatenate([head_scores(aux, fv, device).numpy(),
                                                           head_scores(aux, f_val[vi], device).numpy()])
        arrays["valclass_unseen_labels"] = np.array(v_labels + [int(y_val[i]) for i in vi], dtype=np.int64)
        arrays["valclass_classes"] = np.array(vset, dtype=np.int64)
    return arrays


def cdm_worker(config: dict) -> None:
    """Ray Train worker. ``config``: {"cfg": RunConfig dict, "data": {split: {paths, labels}}, ...}."""
    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.methods.digzsl.cdm import CDMHead, save_cdm, train_epoch
    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.methods.digzsl.config import DigzslRunConfig
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip
    from digzsl_ray.prototypes import load_prototypes

    quiet_train_worker_logs()
    # 1. Rebuild typed config; pin threads.
    cfg = DigzslRunConfig.model_validate(config["cfg"])
    c = cfg.cdm
    torch.set_num_threads(cfg.models.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    # 2. Frozen CLIP and prototypes.
    clip_model, _, _ = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)
    size, (mean, std) = clip_image_size(clip_model), clip_norm(clip_model)
    protos, names, _ = load_prototypes(config["prototypes"])
    seen = torch.tensor(config["seen"])
    pos = {int(s): i for i, s in enumerate(seen.tolist())}

    # 3. Features of this worker's shard of the training images, and of the validation images.
    f_train, y_train, tr_labels, f_val, y_val = _shard_features(config, cfg, clip_model, size, mean, std, pos,
                                                                rank, world, device)

    # 4. Head, optimiser, resume.
    head = CDMHead(protos, f_train.shape[-1], c.hidden_dim, c.temperature)
    model = ray.train.torch.prepare_model(head)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    start, best_acc, best_state, history = 0, -1.0, None, []
    st = restore_state()
    if st:
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        start, best_acc, best_state, history = st["epoch"] + 1, st["best_acc"], st["best_state"], st["history"]
        history.append({"resumed_at_epoch": start})

    # 5. Epochs: train, validate on held-out trainval images, checkpoint.
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    for epoch in range(start, c.epochs):
        gen.manual_seed(cfg.seed * 7919 + rank * 101 + epoch)
        maybe_fail("cdm", spec=config.get("fault", ""), epoch=epoch)
        loss = train_epoch(model, f_train, y_train, seen, opt, c.batch_size, gen, device)
        acc = _val_accuracy(head, f_val, y_val, seen.numpy(), device)
        if acc > best_acc:
            best_acc, best_state = acc, _snapshot(head)
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_acc": round(acc, 3)})
        metrics = {"epoch": epoch, "loss": loss, "val_acc": acc, "best_val_acc": best_acc}
        report_state(metrics, {"head": head.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                               "best_acc": best_acc, "best_state": best_state, "history": history}, rank)

    # 6. The validation-class protocol (xlsa17 trainclasses/valclasses): a second head, trained on the
    #    same features without the validation classes V, scores the real images of V as pseudo-unseen
    #    images. Calibration can then choose lambda on real images only (no synthetic image involved).
    aux = _valclass_head(config, cfg, protos, seen, f_train, tr_labels, f_val, y_val, gen, rank, world, device)

    # 7. Rank 0: best head -> OUT/cdm, plus scores of val and test images for evaluation.
    if rank == 0:
        head.load_state_dict(best_state)
        arrays = _score_splits(config, head, aux, clip_model, size, mean, std, len(names), f_val, y_val, device)
        write_npz(config["scores"], **arrays)
        save_cdm(Path(config["out"]), head, {
            "clip": cfg.models.clip, "clip_pretrained": cfg.models.clip_pretrained, "hidden_dim": c.hidden_dim,
            "temperature": c.temperature, "image_size": size, "mean": list(mean), "std": list(std),
            "class_names": names, "seen": seen.tolist(), "best_val_acc": best_acc, "history": history,
            "fingerprint": config["fingerprint"],
        })


def cdm_metrics(scores_file: Path, config_file: Path, split) -> dict:
    """ZSL top-1 and GZSL U/S/H of the CDM on the test splits (uncalibrated: no unseen validation data yet)."""
    s = np.load(scores_file)
    z = zsl_top1(s["test_unseen_scores"], s["test_unseen_labels"], split.unseen)
    g = gzsl(s["test_seen_scores"], s["test_seen_labels"], s["test_unseen_scores"], s["test_unseen_labels"],
             split.seen, split.unseen, 0.0)
    meta = json.loads(config_file.read_text())
    return {"zsl_top1": z, "gzsl_U": g["U"], "gzsl_S": g["S"], "gzsl_H": g["H"], "calibration_lambda": 0.0,
            "calibration": "none here (no unseen validation data before generation); OUT/metrics.json reports this "
                           "model calibrated on the run's validation data",
            "best_val_acc_seen": meta["best_val_acc"], "epochs": sum(1 for h in meta["history"] if "epoch" in h)}


class CDMStage(Stage):
    name = "train-cdm"
    help = "train the category discrimination model on seen classes (Ray Train) -> OUT/cdm/"
    writes = {"dir": "cdm", "config": "cdm/config.json", "weights": "cdm/head.safetensors",
              "scores": "cdm/scores.npz", "metrics": "cdm/metrics.json"}
    reads = ("prototypes:prototypes",)
    depends_on = ("cdm", "models.clip", "models.clip_pretrained", "seed", "data.val_fraction", "data.val_seed")

    def fingerprint(self, ctx, *extra) -> str:
        # the validation classes decide the second head (the dataset's list, or the val_seed draw)
        return super().fingerprint(ctx, {"val_classes": validation_classes(ctx.split, ctx.cfg.data.val_seed)}, *extra)

    def complete(self, ctx) -> bool:
        if not all(ctx.path(f"train-cdm:{k}").is_file() for k in ("config", "weights", "scores", "metrics")):
            return False
        return json.loads(ctx.path("train-cdm:config").read_text()).get("fingerprint") == self.fingerprint(ctx)

    def cached(self, ctx) -> dict:
        return json.loads(ctx.path("train-cdm:metrics").read_text())

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.digzsl.curves import cdm_curves

        return cdm_curves(ctx)

    def run(self, ctx) -> dict:
        """Train the CDM and return its own metrics (OUT/cdm/metrics.json)."""
        from digzsl_ray.distributed.trainloop import fit, make_trainer

        cfg, split, rd = ctx.cfg, ctx.split, ctx.rd
        protos = ctx.require("prototypes:prototypes")
        fp = self.fingerprint(ctx)
        ctx.path("train-cdm:metrics").unlink(missing_ok=True)  # stale (other settings) or incomplete
        t0 = time.time()
        w = cfg.cdm.workers
        data = {"train": _items_payload(split.train_items()), "val": _items_payload(split.val),
                "test_seen": _items_payload(split.items["test_seen"]),
                "test_unseen": _items_payload(split.items["test_unseen"])}
        trainer = make_trainer(
            cdm_worker,
            {"fault": current_spec(), "cfg": cfg.model_dump(mode="json"), "data": data, "seen": list(split.seen),
             "val_classes": validation_classes(split, cfg.data.val_seed),
             "prototypes": str(protos), "out": str(ctx.path("train-cdm:dir")),
             "scores": str(ctx.path("train-cdm:scores")), "fingerprint": fp},
            name=f"cdm-{fp}", storage=rd.ray_storage, num_workers=w.num_workers, use_gpu=w.use_gpu,
            cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures)
        fit(trainer, cfg.ray.keep_checkpoints)
        metrics = cdm_metrics(ctx.path("train-cdm:scores"), ctx.path("train-cdm:config"), split)
        write_json(ctx.path("train-cdm:metrics"), metrics)
        stage_timing(rd, "cdm", time.time() - t0)
        log.info("cdm: ZSL top-1 %.1f, GZSL U %.1f S %.1f H %.1f (uncalibrated)", metrics["zsl_top1"],
                 metrics["gzsl_U"], metrics["gzsl_S"], metrics["gzsl_H"])
        return metrics
