"""The shared prototypes stage: CLIP text embeddings of every class name -> ``OUT/prototypes.safetensors``."""

from __future__ import annotations

import logging
import time

from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


class PrototypesStage(Stage):
    name = "prototypes"
    help = "embed every class name with CLIP (prompt ensemble) -> OUT/prototypes.safetensors"
    writes = {"prototypes": "prototypes.safetensors"}
    depends_on = ("prototypes", "models.clip", "models.clip_pretrained")
    needs_ray = False

    def complete(self, ctx) -> bool:
        from digzsl_ray.prototypes import load_prototypes

        path = ctx.path("prototypes:prototypes")
        if not path.is_file():
            return False
        _, names, meta = load_prototypes(path)
        return names == list(ctx.split.classes) and meta.get("fingerprint") == self.fingerprint(ctx)

    def run(self, ctx):
        """Embed every class name with the configured CLIP (skipped by the runner when complete)."""
        from digzsl_ray.models.presets import load_clip, pick_device
        from digzsl_ray.prototypes import build_prototypes, save_prototypes

        cfg, path = ctx.cfg, ctx.path("prototypes:prototypes")
        t0 = time.time()
        device = pick_device(cfg.models.device)
        model, _, tokenizer = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)
        protos = build_prototypes(model, tokenizer, ctx.split.classes, cfg.prototypes.templates, device=device)
        save_prototypes(path, protos, ctx.split.classes,
                        extra={"templates": cfg.prototypes.templates, "clip": cfg.models.clip,
                               "clip_pretrained": cfg.models.clip_pretrained, "fingerprint": self.fingerprint(ctx)})
        stage_timing(ctx.rd, "prototypes", time.time() - t0)
        log.info("prototypes: %d classes x %d dims -> %s", *protos.shape, path)
        return str(path)

    def cached(self, ctx) -> str:
        return str(ctx.path("prototypes:prototypes"))

    def describe(self, ctx, result) -> str:
        return str(result)
