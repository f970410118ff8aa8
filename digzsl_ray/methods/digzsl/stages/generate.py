"""Stage 4: generate N images per unseen class with Ray Data -> Parquet shards.

```
OUT/synthetic/<shard>.parquet          DCT prompts (the method); schema in the README ("What a run writes")
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

from digzsl_ray.errors import MissingInputError
from digzsl_ray.generation import collect_shards, read_manifest
from digzsl_ray.methods.digzsl.generation import (
    ImageGenerator,
    keep_thresholds,
    plan_shards,
    prompts_for,
    shard_rows,
    write_shard,
)
from digzsl_ray.io import read_json, write_json
from digzsl_ray.methods.digzsl.variants import DCT, synthetic_variants
from digzsl_ray.slug import slugify
from digzsl_ray.stages.contract import Stage, file_sha, fingerprint
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def plan(ctx, variant: str):
    """The shards of one synthetic set: DCT prompts with each class's learned token, or plain prompts."""
    cfg, split, g = ctx.cfg, ctx.split, ctx.cfg.generate
    classes = []
    if variant == DCT:
        index_path = ctx.require("learn-tokens:index")
        tokens = {e["name"]: e for e in read_json(index_path).values()}
        missing = [split.classes[i] for i in split.unseen if split.classes[i] not in tokens]
        if missing:
            raise MissingInputError(f"{index_path}: no learned token for {missing[:5]}; run `digzsl learn-tokens` "
                                    f"first")
    for i in split.unseen:
        name = split.classes[i]
        if variant == DCT:
            t = tokens[name]
            classes.append({"name": name, "label": i, "slug": t["slug"], "token": t["token"],
                            "token_sha256": t["sha256"],
                            "prompts": prompts_for(cfg.tokens.templates, t["token"], name, g.images_per_class)})
        else:
            classes.append({"name": name, "label": i, "slug": slugify(name),
                            "prompts": [g.plain_template.format(name=name)] * g.images_per_class})
    settings = fingerprint(cfg.models.sd, cfg.models.precision, g.num_inference_steps, g.guidance_scale,
                           file_sha(ctx.require("train-cdm:weights")))
    return plan_shards(variant, classes, g.rows_per_shard, g.seed, settings)


def generate_shards(d, todo, ctor: dict, cfg, on_rows=None) -> None:
    """Generate the rows of the shards ``todo`` on a Ray Data actor pool into ``d/<shard>.parquet``.

    ``ctor``: ``sd``, ``tokens_dir`` (None: no tokens), ``cdm_dir`` and ``unseen`` (the classes the
    CDM scores among) for :class:`ImageGenerator`; the rest comes from ``cfg.models`` and
    ``cfg.generate``. Each shard is written atomically once all its rows arrived."""
    import ray

    g = cfg.generate
    rows = shard_rows(todo)
    expected = {s.shard_id: len(s.seeds) for s in todo}
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // g.batch_size))
    ds = ds.map_batches(
        ImageGenerator,
        fn_constructor_kwargs=dict(**ctor, device=cfg.models.device, precision=cfg.models.precision,
                                   attention=cfg.models.attention, steps=g.num_inference_steps,
                                   guidance=g.guidance_scale, threads=cfg.models.torch_threads),
        batch_size=g.batch_size, compute=ray.data.ActorPoolStrategy(size=g.actors),
        num_gpus=g.num_gpus or None, num_cpus=g.num_cpus, batch_format="numpy",
    )
    collect_shards(ds.iter_batches(batch_size=None, batch_format="numpy"), expected,
                   lambda sid, rows_: write_shard(d / f"{sid}.parquet", rows_), on_rows)


def build_manifest(d, shards, variant: str, g, fp: str) -> dict:
    """The manifest of a finished set: every shard, row count, per-class keep thresholds from the CDM scores."""
    import pyarrow.parquet as pq

    scores: dict[str, list[float]] = {}
    total = 0
    for s in shards:
        t = pq.read_table(d / f"{s.shard_id}.parquet", columns=["class_name", "cdm_score"])
        total += t.num_rows
        for name, sc in zip(t.column("class_name").to_pylist(), t.column("cdm_score").to_pylist()):
            scores.setdefault(name, []).append(sc)
    return {
        "variant": variant, "rows": total, "shards": [f"{s.shard_id}.parquet" for s in shards],
        "images_per_class": g.images_per_class, "keep_fraction": g.keep_fraction,
        "keep_threshold": keep_thresholds(scores, g.keep_fraction),
        "mean_cdm_score": {k: float(sum(v) / len(v)) for k, v in scores.items()},
        "num_inference_steps": g.num_inference_steps, "guidance_scale": g.guidance_scale,
        "fingerprint": fp,
    }


class GenerateStage(Stage):
    name = "generate"
    help = "generate N images per unseen class with the tokens (Ray Data) -> OUT/synthetic/"
    writes = {DCT: "synthetic", f"{DCT}_manifest": "synthetic/_manifest.json",
              "plain_prompt": "synthetic_plain", "plain_prompt_manifest": "synthetic_plain/_manifest.json"}
    reads = ("train-cdm:weights",)
    requires = ("learn-tokens:index",)  # its tokens count by identity (sha256), not the index file's bytes
    depends_on = ("generate", "tokens.templates", "models.sd", "models.precision")

    def fingerprint(self, ctx, *extra) -> str:
        path = ctx.path("learn-tokens:index")
        tokens = sorted((e["name"], e["sha256"]) for e in read_json(path).values()) if path.is_file() else []
        return super().fingerprint(ctx, tokens, *extra)

    def complete(self, ctx) -> bool:
        fp = self.fingerprint(ctx)
        for v in synthetic_variants(ctx.cfg):
            d, m = ctx.path(f"generate:{v}"), read_manifest(ctx.path(f"generate:{v}"))
            if not m or m.get("fingerprint") != fp:
                return False
            planned = [f"{s.shard_id}.parquet" for s in plan(ctx, v)]
            if m.get("shards") != planned or not all((d / f).is_file() for f in planned):
                return False
        return True

    def cached(self, ctx) -> dict:
        return {v: read_manifest(ctx.path(f"generate:{v}")) for v in synthetic_variants(ctx.cfg)}

    def describe(self, ctx, manifests) -> str:
        import json

        return json.dumps({v: m["rows"] for v, m in manifests.items()})

    def run(self, ctx) -> dict:
        """Generate every missing shard of every synthetic set; returns {variant: manifest}."""
        from tqdm.auto import tqdm

        cfg, split, rd, progress = ctx.cfg, ctx.split, ctx.rd, ctx.progress
        g = cfg.generate
        fp = self.fingerprint(ctx)
        out = {}
        for variant in synthetic_variants(cfg):
            t0 = time.time()
            d = ctx.path(f"generate:{variant}")
            d.mkdir(parents=True, exist_ok=True)
            shards = plan(ctx, variant)
            todo = [s for s in shards if not (d / f"{s.shard_id}.parquet").is_file()]
            if todo:
                ctor = dict(sd=cfg.models.sd, tokens_dir=str(ctx.path("learn-tokens:dir")) if variant == DCT else None,
                            cdm_dir=str(ctx.path("train-cdm:dir")), unseen=list(split.unseen))
                total = sum(len(s.seeds) for s in shards)
                bar = tqdm(total=total, initial=total - sum(len(s.seeds) for s in todo), desc=f"generate {variant}",
                           unit="img", disable=not progress, dynamic_ncols=True)
                try:
                    generate_shards(d, todo, ctor, cfg, on_rows=bar.update)
                finally:
                    bar.close()
            # Shards of other settings (stale tokens, other steps...) are not this run's data: remove them.
            planned = {f"{s.shard_id}.parquet" for s in shards}
            for f in d.glob("*.parquet"):
                if f.name not in planned:
                    f.unlink()
            manifest = build_manifest(d, shards, variant, g, fp)
            write_json(ctx.path(f"generate:{variant}_manifest"), manifest)
            out[variant] = manifest
            stage_timing(rd, f"generate_{variant}", time.time() - t0)
            log.info("generate %s: %d rows in %d shards", variant, manifest["rows"], len(shards))
        return out
