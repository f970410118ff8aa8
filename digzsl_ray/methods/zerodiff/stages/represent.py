"""Stage: the supervised-contrastive representation r of each fold -> ``OUT/represent/``.

Small (an MLP over features; seconds on MiniWorld, about a minute for SUN's 14k features on a
CPU), so it runs in the driver process, not on the cluster.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from digzsl_ray.io import read_json, write_json
from digzsl_ray.methods.zerodiff.folds import FOLDS
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


class RepresentStage(Stage):
    name = "train-representation"
    help = "supervised-contrastive representation r per fold (SupCon on seen training features) -> OUT/represent/"
    writes = {"dir": "represent", "meta": "represent/meta.json"}
    reads = ("extract-features:meta",)
    depends_on = ("represent", "features.train_fraction", "features.train_split_file", "features.fraction_seed",
                  "data.val_seed", "seed")
    needs_ray = False

    def complete(self, ctx) -> bool:
        m = ctx.path("train-representation:meta")
        return m.is_file() and read_json(m).get("fingerprint") == self.fingerprint(ctx)

    def cached(self, ctx) -> dict:
        return read_json(ctx.path("train-representation:meta"))

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.zerodiff.curves import representation_curves

        return representation_curves(ctx)

    def run(self, ctx) -> dict:
        import torch
        from safetensors.torch import save_file

        from digzsl_ray.io import atomic_path
        from digzsl_ray.methods.zerodiff.features import load_features
        from digzsl_ray.methods.zerodiff.folds import build_folds
        from digzsl_ray.methods.zerodiff.represent import train_representation

        cfg = ctx.cfg
        t0 = time.time()
        d = ctx.path("train-representation:dir")
        d.mkdir(parents=True, exist_ok=True)
        folds = build_folds(cfg, ctx.split, load_features(ctx.path("extract-features:dir")))
        meta = {"fingerprint": self.fingerprint(ctx), "config": cfg.represent.model_dump(), "folds": {}}
        for name in FOLDS:
            fold = folds[name]
            x = torch.from_numpy(np.ascontiguousarray(fold.x["train"], np.float32))
            y = torch.from_numpy(fold.y["train"])
            net, hist = train_representation(x, y, cfg.represent, cfg.seed + (0 if name == "final" else 1),
                                             progress=ctx.progress)
            with atomic_path(d / f"{name}.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
            meta["folds"][name] = {"loss": hist, "train_rows": int(len(y)), "in_dim": int(x.shape[1])}
        write_json(ctx.path("train-representation:meta"), meta)
        stage_timing(ctx.rd, "represent", time.time() - t0)
        log.info("represent: SupCon loss %s -> %s (final fold)", meta["folds"]["final"]["loss"][0],
                 meta["folds"]["final"]["loss"][-1])
        return {k: v["loss"][-1] for k, v in meta["folds"].items()}
