"""Stage: image features x of every split -> ``OUT/features/<split>/part-*.parquet``.

``features.source: extract`` runs a Ray Data actor pool (:class:`FeatureExtractor`, one backbone
per actor; ``features.num_gpus`` per actor on a GPU cluster) over the split's image paths and
writes the shards atomically; ``backbone: cnn`` first fine-tunes a torchvision ResNet with
cross-entropy on the seen training images on Ray Train (checkpoint per epoch, resumed after a
worker failure; the epoch with the lowest validation loss is kept) -> ``OUT/features/cnn/``.
``source: res101`` reads the xlsa17 res101.mat directly.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.io import read_json, write_json
from digzsl_ray.methods.zerodiff.folds import SPLIT_NAMES
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def cnn_worker(config: dict) -> None:
    """Ray Train worker: fine-tune the CNN on the seen training images (cross-entropy over seen)."""
    from pathlib import Path

    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.images import load_images
    from digzsl_ray.methods.zerodiff.features import CNN_MEAN, CNN_STD, build_cnn, cnn_epoch, cnn_loss, save_cnn

    quiet_train_worker_logs()
    # 1. Settings, threads, seed, device.
    f = config["features"]
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    size = f["cnn_image_size"]
    seen = config["seen"]
    pos = {c: i for i, c in enumerate(seen)}
    # 2. The seen training and validation images, in memory.
    tr = load_images(config["train_paths"], size, progress=rank == 0, desc="cnn: loading images")
    ytr = torch.tensor([pos[c] for c in config["train_labels"]])
    va = load_images(config["val_paths"], size)
    yva = torch.tensor([pos[c] for c in config["val_labels"]])
    # 3. The network and its optimiser; a restarted worker resumes from the last checkpoint.
    net = build_cnn(f["cnn_arch"], len(seen), f["cnn_weights"]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=f["cnn_lr"], momentum=0.9, weight_decay=1e-4)
    start, best, best_state, history = 0, float("inf"), None, []
    st = restore_state()
    if st:
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        start, best, best_state, history = st["epoch"] + 1, st["best"], st["best_state"], st["history"]
    # 4. Epochs: train, validation loss (the best epoch kept), a checkpoint each.
    gen = torch.Generator()
    for epoch in range(start, f["cnn_epochs"]):
        gen.manual_seed(config["seed"] * 1009 + epoch)
        maybe_fail("cnn", spec=config.get("fault", ""), epoch=epoch)
        loss = cnn_epoch(net, tr, ytr, opt, f["cnn_batch_size"], size, gen, device)
        vloss = cnn_loss(net, va, yva, size, device) if len(va) else loss
        if vloss < best:
            best, best_state = vloss, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_loss": round(vloss, 5)})
        report_state({"epoch": epoch, "val_loss": vloss}, {"net": net.state_dict(), "opt": opt.state_dict(),
                                                          "epoch": epoch, "best": best, "best_state": best_state,
                                                          "history": history}, rank)
    # 5. Rank 0: the best epoch's weights -> OUT/features/cnn.
    if rank == 0:
        net.load_state_dict(best_state)
        save_cnn(Path(config["out"]), net, {"arch": f["cnn_arch"], "num_classes": len(seen), "seen": seen,
                                      "image_size": size, "mean": list(CNN_MEAN), "std": list(CNN_STD),
                                      "best_val_loss": best, "history": history, "fingerprint": config["fingerprint"]})


class FeaturesStage(Stage):
    name = "extract-features"
    help = "image features of every split (CLIP tower, fine-tuned CNN or res101.mat) -> OUT/features/"
    writes = {"dir": "features", "meta": "features/meta.json", "cnn": "features/cnn"}
    depends_on = ("features.source", "features.res101_file", "features.backbone", "features.cnn_arch",
                  "features.cnn_weights", "features.cnn_epochs", "features.cnn_lr", "features.cnn_batch_size",
                  "features.cnn_image_size", "models.clip", "models.clip_pretrained", "seed", "data.val_fraction",
                  "data.val_seed")

    def complete(self, ctx) -> bool:
        m = ctx.path("extract-features:meta")
        return m.is_file() and read_json(m).get("fingerprint") == self.fingerprint(ctx)

    def cached(self, ctx) -> dict:
        return read_json(ctx.path("extract-features:meta"))

    def run(self, ctx) -> dict:
        from pathlib import Path

        from digzsl_ray.methods.zerodiff.features import write_feature_shards

        cfg, split, f = ctx.cfg, ctx.split, ctx.cfg.features
        fp = self.fingerprint(ctx)
        t0 = time.time()
        root = ctx.path("extract-features:dir")
        ctx.path("extract-features:meta").unlink(missing_ok=True)
        counts = {}
        if f.source == "res101":
            from digzsl_ray.data import dataset_root
            from digzsl_ray.methods.zerodiff.features import res101_rows

            if cfg.data.format != "xlsa17":
                from digzsl_ray.config import ConfigError

                raise ConfigError("features.source: 'res101' reads xlsa17's res101.mat; data.format must be 'xlsa17'")
            path = Path(f.res101_file or Path(cfg.data.splits_dir) / "res101.mat").expanduser()
            for s in SPLIT_NAMES:
                items = split.items[s]
                x = res101_rows(path, cfg.data.dataset, dataset_root(cfg.data, ctx.rd.root).resolve(), len(split.classes),
                                items)
                write_feature_shards(root / s, np.arange(len(items)), np.array([it.label for it in items]),
                                     [it.path for it in items], x)
                counts[s] = len(items)
            dim, backbone = 2048, f"res101.mat ({path})"
        else:
            spec = self._spec(ctx, fp)
            got = self._extract(ctx, spec, {s: split.items[s] for s in SPLIT_NAMES})
            dim = 0
            for s in SPLIT_NAMES:
                x, idx, labels, paths = got[s]
                write_feature_shards(root / s, idx, labels, paths, x)
                counts[s], dim = len(idx), (x.shape[1] if len(x) else dim)
            backbone = f.backbone if f.backbone == "clip" else f"cnn ({f.cnn_arch})"
        meta = {"fingerprint": fp, "dim": int(dim), "counts": counts, "backbone": backbone,
                "normalised": f.source == "extract" and f.backbone == "clip"}
        write_json(ctx.path("extract-features:meta"), meta)
        stage_timing(ctx.rd, "features", time.time() - t0)
        log.info("features: %s, %d dims, %s", backbone, dim, counts)
        return meta

    def _spec(self, ctx, fp: str) -> dict:
        cfg, f = ctx.cfg, ctx.cfg.features
        spec = {"backbone": f.backbone, "device": cfg.models.device, "threads": cfg.models.torch_threads,
                "clip": cfg.models.clip, "clip_pretrained": cfg.models.clip_pretrained}
        if f.backbone == "cnn":
            cnn = ctx.path("extract-features:cnn")
            done = (cnn / "config.json").is_file() and read_json(cnn / "config.json").get("fingerprint") == fp
            if not done:
                self._finetune(ctx, fp)
            spec["cnn_dir"] = str(cnn)
        return spec

    def _finetune(self, ctx, fp: str) -> None:
        from digzsl_ray.distributed.faults import current_spec
        from digzsl_ray.distributed.trainloop import fit, make_trainer

        cfg, split, f = ctx.cfg, ctx.split, ctx.cfg.features
        tr, va = split.train_items(), split.val
        w = f.cnn_workers
        fit(make_trainer(cnn_worker, {
            "features": f.model_dump(mode="json"), "threads": cfg.models.torch_threads, "seed": cfg.seed,
            "seen": list(split.seen), "train_paths": [it.path for it in tr], "train_labels": [it.label for it in tr],
            "val_paths": [it.path for it in va], "val_labels": [it.label for it in va],
            "out": str(ctx.path("extract-features:cnn")), "fingerprint": fp, "fault": current_spec()},
            name=f"cnn-{fp}", storage=ctx.rd.ray_storage, num_workers=w.num_workers, use_gpu=w.use_gpu,
            cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures), cfg.ray.keep_checkpoints)

    def _extract(self, ctx, spec: dict, splits: dict[str, list]) -> dict:
        """One Ray Data pass over the images of every split: {split: (features, index, labels, paths)}."""
        import ray
        from tqdm.auto import tqdm

        from digzsl_ray.distributed.cluster import quiet_data_progress
        from digzsl_ray.methods.zerodiff.features import FeatureExtractor

        f = ctx.cfg.features
        rows = [{"index": i, "path": it.path, "label": it.label, "split": s}
                for s, items in splits.items() for i, it in enumerate(items)]
        got: dict = {s: ([], [], [], []) for s in splits}
        if rows:
            quiet_data_progress()
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // f.batch_size, 64)))
            ds = ds.map_batches(FeatureExtractor, fn_constructor_kwargs={"spec": spec}, batch_size=f.batch_size,
                                compute=ray.data.ActorPoolStrategy(size=f.actors), num_gpus=f.num_gpus or None,
                                num_cpus=f.num_cpus, batch_format="numpy")
            with tqdm(total=len(rows), desc="features", unit="img", disable=not ctx.progress) as bar:
                for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for s in np.unique(b["split"]):
                        m = b["split"] == s
                        xs, idx, labels, paths = got[str(s)]
                        xs.append(np.asarray(b["feature"][m], np.float32))
                        idx.append(b["index"][m])
                        labels.append(b["label"][m])
                        paths.extend(str(p) for p in b["path"][m])
                    bar.update(len(b["index"]))
        out = {}
        for s, (xs, idx, labels, paths) in got.items():
            out[s] = ((np.concatenate(xs), np.concatenate(idx), np.concatenate(labels), paths) if xs else
                      (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), []))
        return out
