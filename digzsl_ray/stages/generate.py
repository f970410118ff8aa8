"""Stage 4: generate N images per unseen class with Ray Data -> Parquet shards.

```
OUT/synthetic/<shard>.parquet          DCT prompts (the method); schema of DESIGN section 3
OUT/synthetic/_manifest.json           shards, rows, per-class CDM-score keep thresholds
OUT/synthetic_plain/<shard>.parquet    the plain-prompt set for the ablation (same counts)
```
Rows flow through ``map_batches(ImageGenerator, compute=ActorPoolStrategy(size=actors))``; the driver
streams the results and writes each shard atomically once all its rows arrived, so a killed run
leaves only complete shards and a rerun generates the missing ones (no duplicates).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..generation import (VARIANT_DCT, VARIANT_PLAIN, ImageGenerator, keep_thresholds, plan_shards,
                          read_manifest, shard_rows, write_shard)
from ..io import write_json
from .common import RunDir, file_sha, fingerprint, stage_timing
from .tokens import load_index

log = logging.getLogger("digzsl")

VARIANT_DIRS = {VARIANT_DCT: "synthetic", VARIANT_PLAIN: "synthetic_plain"}


def variant_dir(rd: RunDir, variant: str) -> Path:
    return rd.root / VARIANT_DIRS[variant]


def variants(cfg) -> list[str]:
    return [VARIANT_DCT, VARIANT_PLAIN] if cfg.generate.plain_prompt else [VARIANT_DCT]


def _plan(cfg, rd: RunDir, split, variant: str):
    index = load_index(rd)
    tokens = {e["name"]: {"token": e["token"], "sha256": e["sha256"], "slug": e["slug"]} for e in index.values()}
    unseen = [(split.classes[i], i) for i in split.unseen]
    if variant == VARIANT_DCT:
        missing = [n for n, _ in unseen if n not in tokens]
        if missing:
            raise FileNotFoundError(f"{rd.tokens}: no learned token for {missing[:5]}; run `digzsl learn-tokens` first")
    g = cfg.generate
    settings = fingerprint(cfg.models.sd, g.num_inference_steps, g.guidance_scale, file_sha(rd.cdm / "head.safetensors"))
    return plan_shards(variant, tokens, unseen, g.images_per_class, g.rows_per_shard, g.seed,
                       cfg.tokens.templates, g.plain_template, settings)


def generation_complete(cfg, rd: RunDir, split) -> bool:
    for v in variants(cfg):
        d = variant_dir(rd, v)
        m = read_manifest(d)
        planned = [f"{s.shard_id}.parquet" for s in _plan(cfg, rd, split, v)]
        if not m or m.get("shards") != planned or not all((d / f).is_file() for f in planned):
            return False
    return True


def run_generate(cfg, rd: RunDir, split, progress: bool = True) -> dict:
    """Generate every missing shard of every variant; returns {variant: manifest}."""
    import pyarrow.parquet as pq
    import ray
    from tqdm.auto import tqdm

    g = cfg.generate
    out = {}
    for variant in variants(cfg):
        t0 = time.time()
        d = variant_dir(rd, variant)
        d.mkdir(parents=True, exist_ok=True)
        shards = _plan(cfg, rd, split, variant)
        todo = [s for s in shards if not (d / f"{s.shard_id}.parquet").is_file()]
        if todo:
            rows = shard_rows(todo)
            expected = {s.shard_id: len(s.seeds) for s in todo}
            ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // g.batch_size))
            ds = ds.map_batches(
                ImageGenerator,
                fn_constructor_kwargs=dict(sd=cfg.models.sd, tokens_dir=str(rd.tokens) if variant == VARIANT_DCT else None,
                                           cdm_dir=str(rd.cdm), unseen=list(split.unseen), device=cfg.models.device,
                                           precision=cfg.models.precision, attention=cfg.models.attention,
                                           steps=g.num_inference_steps, guidance=g.guidance_scale,
                                           threads=cfg.models.torch_threads),
                batch_size=g.batch_size, compute=ray.data.ActorPoolStrategy(size=g.actors),
                num_gpus=g.num_gpus or None, num_cpus=g.num_cpus, batch_format="numpy",
            )
            pending: dict[str, list[dict]] = {}
            bar = tqdm(total=sum(len(s.seeds) for s in shards),
                       initial=sum(len(s.seeds) for s in shards) - len(rows), desc=f"generate {variant}",
                       unit="img", disable=not progress, dynamic_ncols=True)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                n = len(batch["seed"])
                for i in range(n):
                    row = {k: batch[k][i] for k in batch}
                    pending.setdefault(str(row["shard"]), []).append(row)
                    sid = str(row["shard"])
                    if len(pending[sid]) == expected[sid]:
                        write_shard(d / f"{sid}.parquet", pending.pop(sid))
                bar.update(n)
            bar.close()
            if pending:
                raise RuntimeError(f"generation ended with incomplete shards: {sorted(pending)[:5]}")
        # Shards of other settings (stale tokens, other steps...) are not this run's data: remove them.
        planned = {f"{s.shard_id}.parquet" for s in shards}
        for f in d.glob("*.parquet"):
            if f.name not in planned:
                f.unlink()
        # Manifest: every shard, row count, per-class keep thresholds from the CDM scores.
        scores: dict[str, list[float]] = {}
        total = 0
        for s in shards:
            t = pq.read_table(d / f"{s.shard_id}.parquet", columns=["class_name", "cdm_score"])
            total += t.num_rows
            for name, sc in zip(t.column("class_name").to_pylist(), t.column("cdm_score").to_pylist()):
                scores.setdefault(name, []).append(sc)
        manifest = {
            "variant": variant, "rows": total, "shards": [f"{s.shard_id}.parquet" for s in shards],
            "images_per_class": g.images_per_class, "keep_fraction": g.keep_fraction,
            "keep_threshold": keep_thresholds(scores, g.keep_fraction),
            "mean_cdm_score": {k: float(sum(v) / len(v)) for k, v in scores.items()},
            "num_inference_steps": g.num_inference_steps, "guidance_scale": g.guidance_scale,
        }
        write_json(d / "_manifest.json", manifest)
        out[variant] = manifest
        stage_timing(rd, f"generate_{variant}", time.time() - t0)
        log.info("generate %s: %d rows in %d shards", variant, total, len(shards))
    return out
