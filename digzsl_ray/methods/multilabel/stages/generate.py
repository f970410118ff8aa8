"""Stage: generate label-set images with the untuned and the tuned text encoder, filter them with
the CLIP discriminator, all on Ray Data -> ``OUT/synthetic_ml/{base,tuned}/``.

```
OUT/synthetic_ml/<set>/<shard>.parquet   png, index, target_labels, prompt, seed, accepted, labels,
                                         labels_added, probs (over the candidate labels, listed in the
                                         file's metadata), reason, image_set, shard
OUT/synthetic_ml/<set>/_manifest.json    shards, rows, acceptance overall and per label, fingerprint
```
Rows flow through ``map_batches(SceneGenerator)`` and then ``map_batches(SceneFilter)``, two actor
pools pipelined by Ray Data; the driver writes a shard once all its rows arrived, so a killed run
keeps complete shards only and a rerun makes the missing ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from digzsl_ray.generation import collect_shards, read_manifest
from digzsl_ray.io import read_json, write_json
from digzsl_ray.methods.multilabel.variants import TUNED, image_sets
from digzsl_ray.stages.contract import Stage, file_sha, fingerprint
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def settings_of(ctx, image_set: str) -> str:
    cfg, g = ctx.cfg, ctx.cfg.generate
    te = file_sha(ctx.path("tune-text-encoder:weights")) if image_set == TUNED else ""
    return fingerprint(cfg.models.sd, cfg.models.precision, g.num_inference_steps, g.guidance_scale, g.image_size,
                       g.negative_prompt, te, cfg.filter.model_dump(mode="json"), cfg.models.clip,
                       file_sha(ctx.path("prototypes:prototypes")))


def first_round(ctx):
    """``(rows, notes, phrases_used)`` of round 0, the same for both image sets (memoised)."""
    from digzsl_ray.methods.multilabel.generation import FIRST_ROUND_FACTOR, draw_sets, plan_rows
    from digzsl_ray.methods.multilabel.prompts import read_phrases

    split, g = ctx.split, ctx.cfg.generate
    memo = ctx.state.setdefault("ml_plan", {})
    if "rows" not in memo:
        held = g.images_per_label * (FIRST_ROUND_FACTOR if g.quota_counts == "accepted" else 1)
        sets, notes = draw_sets(list(split.unseen), split.classes, held, g.set_size, g.redraw_single, g.confusions,
                                g.seed)
        memo["phrases"] = read_phrases(ctx.require("prompts:dir"), read_json(ctx.require("prompts:index")))
        used: dict = {}
        if g.quota_counts == "accepted" and g.max_rows:
            sets = sets[:g.max_rows]
        memo["rows"] = plan_rows(sets, split.classes, memo["phrases"], g.seed, "generate", 0, used)
        memo["notes"], memo["used"] = notes, used
    return memo["rows"], memo["notes"], dict(memo["used"])


def next_round(ctx, rnd: int, done_rows: list[dict], used: dict, budget: int):
    """Rows of round ``rnd`` from the filtered rows so far (empty when every label met its quota);
    at most ``budget`` rows."""
    from digzsl_ray.methods.multilabel.generation import accepted_counts, draw_round, plan_rows, round_needs

    split, g = ctx.split, ctx.cfg.generate
    held, kept = accepted_counts(done_rows)
    needs = round_needs(held, kept, list(split.unseen), g.images_per_label)
    if not needs or budget <= 0:
        return [], []
    sets, notes = draw_round(needs, split.classes, g.set_size, g.redraw_single, g.confusions, g.seed * 1009 + rnd)
    start = max(int(r["index"]) for r in done_rows) + 1
    memo = ctx.state["ml_plan"]
    return plan_rows(sets[:budget], split.classes, memo["phrases"], g.seed, "generate", start, used), notes


def acceptance(table, names: list[str], unseen: list[int]) -> dict:
    """Acceptance overall and per target label (percent of the images whose target set holds it)."""
    acc = table.column("accepted").to_pylist()
    held, kept = Counter(), Counter()
    for ts, a in zip(table.column("target_labels").to_pylist(), acc):
        for t in ts:
            held[t] += 1
            kept[t] += bool(a)
    return {"overall": round(100 * sum(acc) / max(1, len(acc)), 2),
            "per_label": {names[u]: round(100 * kept[names[u]] / held[names[u]], 2) if held[names[u]] else None
                          for u in unseen},
            "accepted_images_per_label": {names[u]: kept[names[u]] for u in unseen}}


def read_rows(d, shard_ids_: list[str], index: dict[str, int]) -> list[dict]:
    """``index``, ``targets`` (label indices) and ``accepted`` of the rows of some shards."""
    import pyarrow.parquet as pq

    out = []
    for sid in shard_ids_:
        t = pq.read_table(str(d / f"{sid}.parquet"), columns=["index", "target_labels", "accepted"]).to_pydict()
        out += [{"index": i, "targets": [index[x] for x in tl], "accepted": a}
                for i, tl, a in zip(t["index"], t["target_labels"], t["accepted"])]
    return out


class GenerateStage(Stage):
    name = "generate"
    help = "generate label-set images (untuned and tuned text encoder) and filter them with CLIP (Ray Data) -> OUT/synthetic_ml/"
    writes = {"base": "synthetic_ml/base", "base_manifest": "synthetic_ml/base/_manifest.json",
              "tuned": "synthetic_ml/tuned", "tuned_manifest": "synthetic_ml/tuned/_manifest.json"}
    reads = ("prototypes:prototypes", "prompts:index")
    depends_on = ("generate", "filter", "models.sd", "models.precision", "models.clip", "models.clip_pretrained")

    def required(self, ctx):
        return super().required(ctx) + (("tune-text-encoder:weights",) if ctx.cfg.tune.enabled else ())

    def fingerprint(self, ctx, *extra) -> str:
        te = file_sha(ctx.path("tune-text-encoder:weights")) if ctx.cfg.tune.enabled else ""
        return super().fingerprint(ctx, te, *extra)

    def complete(self, ctx) -> bool:
        fp = self.fingerprint(ctx)
        for s in image_sets(ctx.cfg):
            d, m = ctx.path(f"generate:{s}"), read_manifest(ctx.path(f"generate:{s}"))
            if not m or m.get("fingerprint") != fp or "acceptance" not in m:
                return False
            if not all((d / f).is_file() for f in m["shards"]):
                return False
        return True

    def cached(self, ctx) -> dict:
        return {s: {k: read_manifest(ctx.path(f"generate:{s}"))[k] for k in ("rows", "acceptance")}
                for s in image_sets(ctx.cfg)}

    def describe(self, ctx, result) -> str:
        return json.dumps({s: {"rows": m["rows"], "accepted_pct": m["acceptance"]["overall"]} for s, m in result.items()})

    def _generate(self, ctx, d, image_set: str, te: str, shards: list, parents: dict, desc: str) -> None:
        """Generate and filter the rows of ``shards`` not on disk yet (Ray Data), a Parquet file per shard."""
        import ray
        from tqdm.auto import tqdm

        from digzsl_ray.methods.multilabel.generation import SceneFilter, SceneGenerator, input_rows, write_shard

        cfg, split = ctx.cfg, ctx.split
        g, f = cfg.generate, cfg.filter
        todo = [(sid, part) for sid, part in shards if not (d / f"{sid}.parquet").is_file()]
        if not todo:
            return
        total = sum(len(p) for _, p in shards)
        rows = input_rows(todo, image_set)
        expected = {sid: len(part) for sid, part in todo}
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // g.batch_size))
        ds = ds.map_batches(
            SceneGenerator, fn_constructor_kwargs=dict(
                sd=cfg.models.sd, text_encoder=te, device=cfg.models.device, precision=cfg.models.precision,
                attention=cfg.models.attention, steps=g.num_inference_steps, guidance=g.guidance_scale,
                size=g.image_size, negative_prompt=g.negative_prompt, threads=cfg.models.torch_threads),
            batch_size=g.batch_size, compute=ray.data.ActorPoolStrategy(size=g.actors),
            num_gpus=g.num_gpus or None, num_cpus=g.num_cpus, batch_format="numpy")
        ds = ds.map_batches(
            SceneFilter, fn_constructor_kwargs=dict(
                threads=cfg.models.torch_threads, clip=cfg.models.clip, clip_pretrained=cfg.models.clip_pretrained,
                prototypes=str(ctx.require("prototypes:prototypes")), candidates=list(split.unseen),
                policy=f.policy, threshold=f.threshold, top_k=f.top_k, extra_threshold=f.extra_threshold,
                parents=parents, image_size=f.image_size, device=cfg.models.device),
            batch_size=f.batch_size, compute=ray.data.ActorPoolStrategy(size=f.actors),
            num_gpus=f.num_gpus or None, num_cpus=f.num_cpus, batch_format="numpy")
        bar = tqdm(total=total, initial=total - len(rows), desc=desc, unit="img", disable=not ctx.progress,
                   dynamic_ncols=True)
        try:
            collect_shards(ds.iter_batches(batch_size=None, batch_format="numpy"), expected,
                           lambda sid, rows_: write_shard(d / f"{sid}.parquet", rows_, split.classes,
                                                          list(split.unseen)), bar.update)
        finally:
            bar.close()

    def run(self, ctx) -> dict:
        from digzsl_ray.methods.multilabel.generation import accepted_counts, read_set, shard_ids

        cfg, split = ctx.cfg, ctx.split
        g, f = cfg.generate, cfg.filter
        fp = self.fingerprint(ctx)
        index = {n: i for i, n in enumerate(split.classes)}
        parents = {index[k]: [index[p] for p in v if p in index] for k, v in f.parents.items() if k in index}
        out = {}
        for image_set in image_sets(cfg):
            t0 = time.time()
            d = ctx.path(f"generate:{image_set}")
            d.mkdir(parents=True, exist_ok=True)
            settings = settings_of(ctx, image_set)
            rows, notes, used = first_round(ctx)
            te = str(ctx.path("tune-text-encoder:text_encoder")) if image_set == TUNED else ""
            shards_all, done, rounds = [], [], []
            for rnd in range(g.max_rounds if g.quota_counts == "accepted" else 1):
                if rnd:
                    budget = (g.max_rows - len(done)) if g.max_rows else 10**9
                    rows, notes = next_round(ctx, rnd, done, used, budget)
                    if not rows:
                        break
                shards = shard_ids(rows, image_set if rnd == 0 else f"{image_set}-r{rnd}", g.rows_per_shard, settings)
                self._generate(ctx, d, image_set, te, shards, parents, f"generate {image_set} round {rnd}")
                shards_all += shards
                done += read_rows(d, [sid for sid, _ in shards], index)
                held, kept = accepted_counts(done)
                rounds.append({"round": rnd, "rows": len(rows), "sampler_notes": notes,
                               "accepted_per_label": {split.classes[u]: kept.get(u, 0) for u in split.unseen}})
            total = len(done)
            planned = {f"{sid}.parquet" for sid, _ in shards_all}
            for old in d.glob("*.parquet"):
                if old.name not in planned:
                    old.unlink()
            manifest = {"image_set": image_set, "rows": total, "shards": [f"{sid}.parquet" for sid, _ in shards_all],
                        "candidate_labels": split.unseen_names, "images_per_label": g.images_per_label,
                        "quota_counts": g.quota_counts, "rounds": rounds,
                        "sampler_notes": [n for r in rounds for n in r["sampler_notes"]], "fingerprint": fp}
            write_json(d / "_manifest.json", manifest)  # read_set needs the shard list
            manifest["acceptance"] = acceptance(read_set(d, ["target_labels", "accepted"]), split.classes,
                                                list(split.unseen))
            write_json(d / "_manifest.json", manifest)
            out[image_set] = manifest
            stage_timing(ctx.rd, f"generate_{image_set}", time.time() - t0)
            short = [k for k, v in rounds[-1]["accepted_per_label"].items() if v < g.images_per_label]
            log.info("generate %s: %d images in %d round(s), %.1f%% accepted by the filter%s", image_set, total,
                     len(rounds), manifest["acceptance"]["overall"],
                     f"; {len(short)} label(s) short of {g.images_per_label} accepted" if short and
                     g.quota_counts == "accepted" else "")
        return out
