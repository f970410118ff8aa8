"""Stage 3: learn one discriminative class token per unseen class on a pool of Ray actors.

Each actor owns one Stable Diffusion pipeline and the CDM (``num_gpus`` from the config: 1 on a
GPU cluster, so pending actors make the autoscaler add GPU nodes) and learns tokens for the
shards of classes the pool hands it (:mod:`digzsl_ray.distributed.pool`). The driver writes every class's
result atomically the moment it arrives:

```
OUT/tokens/<slug>.safetensors   {token: embedding}, diffusers' textual-inversion format
OUT/tokens/index.json           per class: name, token, updates, stop reason, CDM accuracy, curves
OUT/tokens/summary.json         fresh-seed CDM (and, when the world has one, oracle) accuracy: plain prompt,
                                untrained token, learned token; per class and mean
```
A rerun skips classes already in the index with their file present; a class whose actor died is
re-dispatched and, being a function of (class, seed), gets the same token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digzsl_ray.errors import UserError
from digzsl_ray.io import atomic_path, read_json, write_json
from digzsl_ray.seeds import class_seed
from digzsl_ray.slug import slugify
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

if TYPE_CHECKING:
    import torch

log = logging.getLogger("digzsl")


class TokenStageError(UserError):
    """Bad input to token learning, found before any model loads."""


def class_jobs(cfg, split) -> list[dict]:
    """One job per unseen class: name, class index, slug, placeholder, init word."""
    from digzsl_ray.methods.digzsl.dct import init_word_for, placeholder_for

    jobs = []
    for idx in split.unseen:
        name = split.classes[idx]
        slug = slugify(name)
        jobs.append({"name": name, "class_idx": idx, "slug": slug,
                     "token": placeholder_for(slug, cfg.tokens.placeholder),
                     "init_word": init_word_for(name, cfg.tokens.init_word)})
    return jobs


def preflight(ctx, jobs: list[dict]) -> None:
    """Every check that needs no model: prototypes cover the unseen classes, the pipeline folder is a
    Stable Diffusion pipeline, placeholders are new to its tokenizer, templates are well formed."""
    from digzsl_ray.models.presets import check_sd_source
    from digzsl_ray.prototypes import load_prototypes

    cfg = ctx.cfg
    protos = ctx.require("prototypes:prototypes")
    _, names, _ = load_prototypes(protos)
    missing = [j["name"] for j in jobs if j["name"] not in set(names)]
    if missing:
        raise TokenStageError(f"{len(missing)} unseen class(es) are missing from {protos}: "
                              f"{', '.join(map(repr, missing[:10]))}; rerun `digzsl prototypes`")
    for t in cfg.tokens.templates:
        if "{token}" not in t or "{name}" not in t:
            raise TokenStageError(f"tokens.templates: got {t!r}; expected both '{{token}}' and '{{name}}'")
    if "{slug}" not in cfg.tokens.placeholder:
        raise TokenStageError(f"tokens.placeholder: got {cfg.tokens.placeholder!r}; expected a pattern with '{{slug}}'")
    src = check_sd_source(cfg.models.sd)
    tok_dir = Path(src) / "tokenizer"
    if tok_dir.is_dir():
        from transformers import CLIPTokenizer

        vocab = CLIPTokenizer.from_pretrained(str(tok_dir)).get_vocab()
        clash = [j["token"] for j in jobs if j["token"] in vocab]
        if clash:
            raise TokenStageError(f"placeholder(s) already exist in the tokenizer of {src}: {clash[:5]}; "
                                  f"set tokens.placeholder to another pattern")
    ctx.require("train-cdm:config")


class TokenWorker:
    """The actor: one pipeline, one CDM, the world's oracle when it has one; learns shards of classes."""

    def __init__(self, cfg_dict: dict, cdm_dir: str, progress_dir: str, unseen: list[int], class_names: list[str],
                 actor_id: int):
        import torch

        from digzsl_ray.methods.digzsl.cdm import load_cdm
        from digzsl_ray.data.worlds import world_oracle
        from digzsl_ray.methods.digzsl.config import DigzslRunConfig
        from digzsl_ray.methods.digzsl.dct import DCTLearner
        from digzsl_ray.models.presets import load_sd_pipeline, pick_device

        cfg = DigzslRunConfig.model_validate(cfg_dict)
        torch.set_num_threads(cfg.models.torch_threads)
        self.cfg, self.progress_dir, self.actor_id = cfg, Path(progress_dir), actor_id
        self.class_names = class_names
        device = pick_device(cfg.models.device)
        self.pipe = load_sd_pipeline(cfg.models.sd, device, cfg.models.precision, cfg.models.attention)
        self.cdm = load_cdm(cdm_dir, device)
        self.learner = DCTLearner(self.pipe, self.cdm, unseen, cfg.tokens, precision=cfg.models.precision)
        # The measuring hook: the world's oracle when the dataset comes from a world that has one
        # (MiniWorld); None for real data, and the summary records it as absent.
        self.oracle = world_oracle(cfg.data)

    def ready(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "actor_id": self.actor_id}

    def _progress(self, job: dict):
        path = self.progress_dir / f"actor-{self.actor_id}.json"
        total = self.cfg.tokens.max_updates

        def report(update: int, loss: float, acc: float) -> None:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"class": job["name"], "update": update + 1, "max_updates": total,
                                           "loss": round(loss, 4), "acc": round(acc, 3), "pid": os.getpid()}))
        return report

    def _oracle_acc(self, images: torch.Tensor, name: str) -> float | None:
        if self.oracle is None or name not in self.oracle.classes:
            return None
        return float((self.oracle.predict(images) == self.oracle.classes.index(name)).float().mean())

    def learn_shard(self, shard: list[dict]) -> list[dict]:
        from digzsl_ray.methods.digzsl.generation import prompts_for

        out = []
        t, g = self.cfg.tokens, self.cfg.generate
        for job in shard:
            res = self.learner.learn(job["name"], job["class_idx"], job["token"], job["init_word"],
                                     progress=self._progress(job))
            # Fresh-seed measurement (never training seeds): plain prompt, untrained token, learned token.
            n = t.eval_images
            seeds = [class_seed(job["name"], t.seed + t.eval_seed, "dct-eval") + j for j in range(n)]
            token_id = self.pipe.tokenizer.convert_tokens_to_ids(job["token"])
            dct_prompts = prompts_for(t.templates[:1], job["token"], job["name"], n)
            plain = [g.plain_template.format(name=job["name"])] * n
            variants = {
                "plain": (plain, None, None),
                "untrained": (dct_prompts, token_id, res.init_vector.to(self.pipe.device)),
                "learned": (dct_prompts, token_id, res.vector.to(self.pipe.device)),
            }
            ev = {}
            for key, (prompts, tid, row) in variants.items():
                acc, imgs = self.learner.evaluate(prompts, seeds, job["class_idx"], tid, row,
                                                  steps=g.num_inference_steps, batch=g.batch_size)
                ev[key] = {"cdm_acc": acc, "oracle_acc": self._oracle_acc(imgs, job["name"])}
            out.append({**job, "vector": res.vector.numpy(), "init_vector": res.init_vector.numpy(),
                        "updates": res.updates, "stop_reason": res.stop_reason, "final_cdm_acc": res.final_acc,
                        "loss_curve": res.losses, "acc_curve": res.accs, "seconds": res.seconds,
                        "eval": ev, "actor_id": self.actor_id, "pid": os.getpid()})
        return out


# Driver side --------------------------------------------------------------------------------------
def token_actor_name(root: Path, actor_id: int) -> str:
    """Actors are named (namespace "digzsl") so operators can find and inspect them."""
    tag = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return f"digzsl-tokens-{tag}-{actor_id}"


def load_index(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def finished(tokens_dir: Path, index: dict, job: dict, fp: str) -> bool:
    e = index.get(job["slug"])
    return (bool(e) and e.get("token") == job["token"] and e.get("fingerprint") == fp
            and (tokens_dir / f"{job['slug']}.safetensors").is_file())


def write_result(tokens_dir: Path, index_path: Path, index: dict, res: dict, fp: str) -> None:
    """Token file first, then its index entry (both atomic): an entry always has its file."""
    import torch
    from safetensors.torch import save_file

    vec = torch.from_numpy(np.array(res["vector"], dtype=np.float32))
    path = tokens_dir / f"{res['slug']}.safetensors"
    with atomic_path(path) as tmp:
        save_file({res["token"]: vec.contiguous()}, str(tmp))
    entry = {k: res[k] for k in ("name", "token", "slug", "class_idx", "init_word", "updates", "stop_reason",
                                 "loss_curve", "acc_curve", "seconds", "eval", "actor_id")}
    entry["final_cdm_acc"] = res["final_cdm_acc"]
    entry["file"] = path.name
    entry["sha256"] = hashlib.sha256(vec.numpy().tobytes()).hexdigest()
    entry["init_vector"] = [float(x) for x in res["init_vector"]]
    entry["fingerprint"] = fp
    index[res["slug"]] = entry
    write_json(index_path, index)


def summarise(index: dict, oracle: bool | None = None) -> dict:
    """Per class and mean accuracies (percent) of the three prompt variants on fresh seeds.

    ``oracle``: whether a measuring oracle was present (None: infer from the entries)."""
    per_class, sums = {}, {}
    for slug, e in sorted(index.items()):
        row = {}
        for variant, m in e["eval"].items():
            for metric, v in m.items():
                if v is None:
                    continue
                key = f"{variant}_{metric}"
                row[key] = round(100 * v, 2)
                sums.setdefault(key, []).append(100 * v)
        row.update(updates=e["updates"], stop_reason=e["stop_reason"])
        per_class[e["name"]] = row
    mean = {k: round(float(np.mean(v)), 2) for k, v in sums.items()}
    stops = {}
    for e in index.values():
        stops[e["stop_reason"]] = stops.get(e["stop_reason"], 0) + 1
    if oracle is None:
        oracle = any(m.get("oracle_acc") is not None for e in index.values() for m in e["eval"].values())
    return {"classes": len(index), "mean": mean, "per_class": per_class, "stop_reasons": stops,
            "oracle": "present" if oracle else "absent",
            "mean_updates": round(float(np.mean([e["updates"] for e in index.values()])), 2) if index else 0.0}


def learn_on_pool(cfg, todo: list[dict], cdm_dir: str, progress_dir: Path, unseen: list[int], classes: list[str],
                  root: Path, on_result, on_tick=None):
    """Learn the tokens of the class jobs ``todo`` on a pool of :class:`TokenWorker` actors
    (``tokens.num_gpus`` each: pending GPU actors make the autoscaler add nodes); a lost actor's
    shard is re-dispatched. ``on_result(shard, results)`` gets each shard's results; returns the
    pool's counters."""
    import ray

    from digzsl_ray.distributed.pool import run_pool

    t = cfg.tokens
    shards = [todo[i : i + t.shard_size] for i in range(0, len(todo), t.shard_size)]
    remote = ray.remote(TokenWorker)
    cfg_dict = cfg.model_dump(mode="json")

    def make_actor(i: int):
        return remote.options(num_gpus=t.num_gpus, num_cpus=t.num_cpus, name=token_actor_name(root, i),
                              namespace="digzsl", max_concurrency=1).remote(
            cfg_dict, cdm_dir, str(progress_dir), list(unseen), list(classes), i)

    return run_pool(shards, make_actor, lambda a, s: a.learn_shard.remote(s), on_result,
                    size=min(t.pool_max, len(shards)), min_alive=t.pool_min, max_retries=t.max_retries,
                    on_tick=on_tick)


class TokensStage(Stage):
    name = "learn-tokens"
    help = "learn a discriminative class token per unseen class (Ray actor pool) -> OUT/tokens/"
    writes = {"dir": "tokens", "index": "tokens/index.json", "summary": "tokens/summary.json",
              "progress": "tokens/.progress"}
    reads = ("train-cdm:weights",)
    # tokens: every learning setting (the measurement's eval_* are marked as such); models.sd and
    # models.precision: the pipeline. The fresh-seed measurement (summary.json) records the settings
    # it sampled with; changing them does not relearn tokens.
    depends_on = ("tokens", "models.sd", "models.precision")

    def complete(self, ctx) -> bool:
        index, fp, d = load_index(ctx.path("learn-tokens:index")), self.fingerprint(ctx), ctx.path("learn-tokens:dir")
        return (all(finished(d, index, j, fp) for j in class_jobs(ctx.cfg, ctx.split))
                and ctx.path("learn-tokens:summary").is_file())

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.digzsl.curves import token_curves

        return token_curves(ctx)

    def cached(self, ctx) -> dict:
        return read_json(ctx.path("learn-tokens:summary"))

    def run(self, ctx) -> dict:
        """Learn the tokens of every unseen class not yet done; returns summary.json's content."""
        from tqdm.auto import tqdm

        cfg, split, progress = ctx.cfg, ctx.split, ctx.progress
        tokens_dir, index_path = ctx.path("learn-tokens:dir"), ctx.path("learn-tokens:index")
        progress_dir = ctx.path("learn-tokens:progress")
        jobs = class_jobs(cfg, split)
        preflight(ctx, jobs)
        tokens_dir.mkdir(parents=True, exist_ok=True)
        index = load_index(index_path)
        fp = self.fingerprint(ctx)
        todo = [j for j in jobs if not finished(tokens_dir, index, j, fp)]
        t0 = time.time()
        if todo:
            bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="tokens", unit="class",
                       disable=not progress, dynamic_ncols=True)

            def on_result(shard, results):
                for res in results:
                    write_result(tokens_dir, index_path, index, res, fp)
                    bar.update(1)
                    ev = res["eval"]
                    bar.write(f"token {res['token']}: {res['updates']} updates, stop={res['stop_reason']}, "
                              f"CDM acc {100 * res['final_cdm_acc']:.0f}% (fresh: plain {100 * ev['plain']['cdm_acc']:.0f}% "
                              f"-> learned {100 * ev['learned']['cdm_acc']:.0f}%), {res['seconds']:.1f}s")

            def on_tick():
                live = []
                for p in progress_dir.glob("actor-*.json"):
                    try:
                        d = json.loads(p.read_text())
                        live.append(f"{d['class']} {d['update']}/{d['max_updates']}")
                    except (ValueError, KeyError, OSError):
                        pass
                if live:
                    bar.set_postfix_str("; ".join(sorted(live))[:80], refresh=True)

            try:
                stats = learn_on_pool(cfg, todo, str(ctx.path("train-cdm:dir")), progress_dir, list(split.unseen),
                                      list(split.classes), ctx.rd.root, on_result, on_tick if progress else None)
            finally:
                bar.close()
            log.info("tokens: %d classes, %d actor deaths, %d re-dispatched", stats.completed, stats.actor_deaths,
                     stats.redispatched)
            stage_timing(ctx.rd, "tokens", time.time() - t0)
        from digzsl_ray.data.worlds import has_oracle

        summary = summarise({k: v for k, v in index.items() if k in {j["slug"] for j in jobs}},
                            oracle=has_oracle(cfg.data))
        g = cfg.generate
        summary["measured_with"] = {"eval_images": cfg.tokens.eval_images, "eval_seed": cfg.tokens.eval_seed,
                                    "num_inference_steps": g.num_inference_steps, "plain_template": g.plain_template}
        write_json(ctx.path("learn-tokens:summary"), summary)
        return summary

    def describe(self, ctx, summary) -> str:
        return json.dumps({"classes": summary["classes"], "mean": summary["mean"],
                           "stop_reasons": summary["stop_reasons"]}, indent=2)
