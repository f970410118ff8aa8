"""DIG-ZSL's synthetic-image generation: the row plan and the Ray Data callable class (no ray import here).

A *row* is one image to generate: (variant, class, prompt, seed). Rows are grouped into shards of
``rows_per_shard`` consecutive images of one class; a shard is the unit of resume (a shard file
exists complete or not at all), so a rerun after a kill generates exactly the missing shards and
the row count never changes. Each image is a function of (pipeline, tokens, prompt, seed).
Shared pieces (collecting shards, the validation split of rows, the manifest): :mod:`digzsl_ray.generation`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digzsl_ray.seeds import class_seed

SCHEMA_COLUMNS = ("png", "label", "class_name", "prompt", "seed", "token_sha256", "cdm_score", "variant", "shard")


@dataclass(frozen=True)
class Shard:
    shard_id: str
    variant: str
    class_name: str
    label: int
    token: str
    token_sha256: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]


def prompts_for(templates: list[str], token: str, name: str, n: int) -> list[str]:
    """``n`` prompts cycling through the templates ({token}, {name} substituted)."""
    return [templates[i % len(templates)].format(token=token, name=name) for i in range(n)]


def plan_shards(variant: str, classes: list[dict], rows_per_shard: int, seed: int, settings: str = "") -> list[Shard]:
    """Every shard of one synthetic set (``variant``).

    ``classes``: one dict per class to generate: ``name``, ``label``, ``slug``, ``prompts`` (one per
    image), and for prompts with a learned token ``token`` and ``token_sha256``. Image i of a class
    gets seed ``class_seed(name, seed, "generate-<variant>") + i``. A shard id carries a hash of
    everything its images depend on (``settings``: pipeline, steps, guidance, scorer; the token;
    prompts; seeds), so changed settings or relearned tokens make new shards instead of reusing
    stale ones.
    """
    shards = []
    for c in classes:
        name, prompts = c["name"], list(c["prompts"])
        base = class_seed(name, seed, f"generate-{variant}")
        seeds = [base + i for i in range(len(prompts))]
        for k, start in enumerate(range(0, len(prompts), rows_per_shard)):
            stop = min(start + rows_per_shard, len(prompts))
            key = json.dumps([settings, c.get("token_sha256", ""), prompts[start:stop], seeds[start:stop]])
            fp = hashlib.sha1(key.encode()).hexdigest()[:8]
            shards.append(Shard(f"{variant}-{c['slug']}-{k:04d}-{fp}", variant, name, c["label"],
                                c.get("token", ""), c.get("token_sha256", ""),
                                tuple(prompts[start:stop]), tuple(seeds[start:stop])))
    return shards


def shard_rows(shards: list[Shard]) -> list[dict]:
    """Flatten shards into input rows for Ray Data."""
    rows = []
    for s in shards:
        for i, (p, sd) in enumerate(zip(s.prompts, s.seeds)):
            rows.append({"shard": s.shard_id, "index": i, "variant": s.variant, "class_name": s.class_name,
                         "label": s.label, "prompt": p, "seed": int(sd), "token_sha256": s.token_sha256})
    return rows


class ImageGenerator:
    """Ray Data callable class: loads one pipeline with every learned token, then generates batches.

    Input batch columns: prompt, seed, label, ... ; output adds ``png`` (bytes) and ``cdm_score``
    (the CDM's softmax probability of the row's label among the unseen classes).
    """

    def __init__(self, sd: str, tokens_dir: str | None, cdm_dir: str, unseen: list[int], device: str,
                 precision: str, attention: str, steps: int, guidance: float, threads: int):
        import torch

        from digzsl_ray.methods.digzsl.cdm import load_cdm
        from digzsl_ray.models.presets import load_sd_pipeline, pick_device

        torch.set_num_threads(threads)
        dev = pick_device(device)
        self.pipe = load_sd_pipeline(sd, dev, precision, attention)
        if tokens_dir:
            files = sorted(Path(tokens_dir).glob("*.safetensors"))
            if files:
                self.pipe.load_textual_inversion([str(f) for f in files])
        self.cdm = load_cdm(cdm_dir, dev)
        self.unseen = torch.tensor(unseen)
        self.steps, self.guidance = steps, guidance

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from digzsl_ray.images import png_bytes
        from digzsl_ray.models.sd import generate

        prompts = [str(p) for p in batch["prompt"]]
        seeds = [int(s) for s in batch["seed"]]
        imgs = generate(self.pipe, prompts, seeds, self.steps, self.guidance, batch=len(prompts))
        with torch.no_grad():
            logits = self.cdm(imgs.to(self.pipe.device))[:, self.unseen.to(self.pipe.device)].float()
            probs = logits.softmax(-1).cpu()
        labels = torch.as_tensor(np.array(batch["label"], dtype=np.int64))
        pos = (labels.view(-1, 1) == self.unseen.view(1, -1)).float().argmax(1)
        out = dict(batch)
        out["png"] = np.array([png_bytes(im) for im in imgs], dtype=object)
        out["cdm_score"] = probs[torch.arange(len(pos)), pos].numpy().astype(np.float32)
        return out


def write_shard(path: Path, rows: list[dict]) -> None:
    """Write one shard's rows (sorted by index) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from digzsl_ray.io import atomic_path

    rows = sorted(rows, key=lambda r: r["index"])
    table = pa.table({
        "png": pa.array([bytes(r["png"]) for r in rows], pa.binary()),
        "label": pa.array([int(r["label"]) for r in rows], pa.int64()),
        "class_name": pa.array([str(r["class_name"]) for r in rows], pa.string()),
        "prompt": pa.array([str(r["prompt"]) for r in rows], pa.string()),
        "seed": pa.array([int(r["seed"]) for r in rows], pa.int64()),
        "token_sha256": pa.array([str(r["token_sha256"]) for r in rows], pa.string()),
        "cdm_score": pa.array([float(r["cdm_score"]) for r in rows], pa.float32()),
        "variant": pa.array([str(r["variant"]) for r in rows], pa.string()),
        "shard": pa.array([str(r["shard"]) for r in rows], pa.string()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def keep_thresholds(scores_by_class: dict[str, list[float]], keep_fraction: float) -> dict[str, float | None]:
    """Per class, the CDM-score threshold that keeps the top ``keep_fraction`` of its images
    (``None``: keep everything)."""
    out: dict[str, float | None] = {}
    for name, scores in scores_by_class.items():
        s = np.sort(np.asarray(scores))[::-1]
        k = max(1, int(round(keep_fraction * len(s))))
        out[name] = float(s[k - 1]) if keep_fraction < 1.0 else None
    return out
