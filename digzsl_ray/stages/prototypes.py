"""Stage 1: class prototypes -> ``OUT/prototypes.safetensors``."""

from __future__ import annotations

import logging
import time

from ..models.presets import load_clip, pick_device
from ..prototypes import build_prototypes, load_prototypes, save_prototypes
from .common import RunDir, stage_timing

log = logging.getLogger("digzsl")


def run_prototypes(cfg, rd: RunDir, split) -> None:
    """Embed every class name with the configured CLIP; skipped when the file matches the classes."""
    if rd.prototypes.is_file():
        _, names, meta = load_prototypes(rd.prototypes)
        if names == split.classes and meta.get("templates") == cfg.prototypes.templates:
            log.info("prototypes: complete, skipped")
            return
    t0 = time.time()
    device = pick_device(cfg.models.device)
    model, _, tokenizer = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)
    protos = build_prototypes(model, tokenizer, split.classes, cfg.prototypes.templates, device=device)
    save_prototypes(rd.prototypes, protos, split.classes,
                    extra={"templates": cfg.prototypes.templates, "clip": cfg.models.clip,
                           "clip_pretrained": cfg.models.clip_pretrained})
    stage_timing(rd, "prototypes", time.time() - t0)
    log.info("prototypes: %d classes x %d dims -> %s", *protos.shape, rd.prototypes)
