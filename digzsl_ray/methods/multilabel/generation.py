"""Label-set image generation and the CLIP filter: the row plan and the Ray Data callable classes.

A row is one image: (target label set, prompt, seed). :func:`plan_rows` draws the target sets with
:class:`.sampling.LabelSetSampler`; each set's prompt is the next phrase of its pair
(:mod:`.stages.prompts`). Rows are cut into shards of ``rows_per_shard``; a shard is the unit of
resume. Generation and filtering are two pipelined Ray Data stages (:class:`SceneGenerator`, then
:class:`SceneFilter`), and every row records its filter decision.

The quota (``generate.images_per_label``) counts *accepted* images, as the reference does (it
samples until 200 per label passed the filter), in rounds: round 0 holds each unseen label
``FIRST_ROUND_FACTOR`` times the quota (the *same* rows for the untuned and the tuned text encoder,
a paired comparison); each later round draws label sets among the labels still short of their
quota only, each held ``ceil(short / acceptance so far)`` times, until every label met its quota,
``generate.max_rows`` rows were generated or ``generate.max_rounds`` rounds ran. A round's rows
depend only on the rounds before it, so a killed run resumes shard by shard. With
``generate.quota_counts: generated`` there is one round holding each label ``images_per_label``
times (the counting of earlier versions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digzsl_ray.seeds import class_seed


@dataclass(frozen=True)
class Row:
    index: int
    targets: tuple[int, ...]  # label indices (into split.classes), sorted
    prompt: str
    seed: int


def draw_sets(labels: list[int], names: list[str], quota: int, set_size: int, redraw_single: bool,
              confusions: list, seed: int) -> tuple[list[tuple[int, ...]], list[str]]:
    """Target label sets (label indices) until every label is held by ``quota`` sets; and the sampler's
    notes. A confusion pair naming a label outside ``labels`` is an error."""
    return draw_round({c: quota for c in labels}, names, set_size, redraw_single, confusions, seed, strict=True)


FIRST_ROUND_FACTOR = 4  # round 0 holds each label 4x its accepted quota (an acceptance of 25% would fill it)
MIN_RATE = 0.05  # a label's acceptance is taken as at least this when planning (0 accepted so far: 20x its shortfall)


def round_needs(held: dict[int, int], accepted: dict[int, int], labels: list[int], quota: int) -> dict[int, int]:
    """Appearances to plan per label still short of ``quota`` accepted images: the shortfall over the
    label's acceptance so far (at least :data:`MIN_RATE`), in label-index order. Labels at their quota
    are left out."""
    out = {}
    for c in sorted(labels):
        short = quota - accepted.get(c, 0)
        if short > 0:
            rate = max(MIN_RATE, accepted.get(c, 0) / held[c] if held.get(c) else MIN_RATE)
            out[c] = int(np.ceil(short / rate))
    return out


def draw_round(needs: dict[int, int], names: list[str], set_size: int, redraw_single: bool, confusions: list,
               seed: int, strict: bool = False) -> tuple[list[tuple[int, ...]], list[str]]:
    """Target sets among the labels of ``needs`` (in its order) until each is held ``needs[label]``
    times. Confusion pairs naming other labels are left out (``strict``: an error)."""
    from digzsl_ray.methods.multilabel.sampling import LabelSetSampler

    labels = list(needs)
    local = [names[i] for i in labels]
    top = max(needs.values())
    pairs = [tuple(c) for c in confusions if strict or set(c) <= set(local)]
    sampler = LabelSetSampler(local, quota=top, set_size=min(set_size, len(local)), redraw_single=redraw_single,
                              confusions=pairs, seed=seed)
    sampler.counts[:] = [top - needs[c] for c in labels]
    sets = []
    while not sampler.done():
        s = sampler.draw()
        sampler.accept(s)
        sets.append(tuple(sorted(labels[i] for i in s)))
    return sets, sampler.notes


def accepted_counts(rows: list[dict]) -> tuple[dict[int, int], dict[int, int]]:
    """(images holding each target label, accepted images holding it) over filtered rows with
    ``targets`` (label indices) and ``accepted``."""
    held: dict[int, int] = {}
    kept: dict[int, int] = {}
    for r in rows:
        for t in r["targets"]:
            held[int(t)] = held.get(int(t), 0) + 1
            kept[int(t)] = kept.get(int(t), 0) + int(bool(r["accepted"]))
    return held, kept


def plan_rows(sets: list[tuple[int, ...]], names: list[str], phrases: dict, seed: int, tag: str,
              start: int = 0, used: dict | None = None) -> list[Row]:
    """One row per target set: its pair's next phrase, seed from (tag, seed) + row index. ``start``:
    the first row index; ``used``: phrases already taken per pair (updated), so later rounds go on
    with the next phrases."""
    from digzsl_ray.methods.multilabel.prompts import phrase_for

    base = class_seed("multilabel", seed, tag)
    used = {} if used is None else used
    rows = []
    for i, s in enumerate(sets, start):
        key = tuple(names[j] for j in s)
        k = used.get(key, 0)
        used[key] = k + 1
        rows.append(Row(i, s, phrase_for(phrases, list(key), k), (base + i) & 0x7FFFFFFF))
    return rows


def shard_ids(rows: list[Row], image_set: str, rows_per_shard: int, settings: str) -> list[tuple[str, list[Row]]]:
    """``[(shard_id, rows)]``: consecutive rows; the id hashes the settings and the rows' content."""
    out = []
    for k, start in enumerate(range(0, len(rows), rows_per_shard)):
        part = rows[start:start + rows_per_shard]
        key = json.dumps([settings, [(r.targets, r.prompt, r.seed) for r in part]])
        out.append((f"{image_set}-{k:04d}-{hashlib.sha1(key.encode()).hexdigest()[:8]}", part))
    return out


def input_rows(shards: list[tuple[str, list[Row]]], image_set: str) -> list[dict]:
    return [{"shard": sid, "index": r.index, "image_set": image_set, "targets": list(r.targets), "prompt": r.prompt,
             "seed": int(r.seed)} for sid, part in shards for r in part]


class SceneGenerator:
    """Ray Data callable class: one SD pipeline (optionally with a tuned text encoder) per actor."""

    def __init__(self, sd: str, text_encoder: str, device: str, precision: str, attention: str, steps: int,
                 guidance: float, size: int, negative_prompt: str, threads: int):
        import torch

        from digzsl_ray.models.presets import load_sd_pipeline, pick_device

        torch.set_num_threads(threads)
        self.pipe = load_sd_pipeline(sd, pick_device(device), precision, attention, text_encoder=text_encoder)
        self.steps, self.guidance, self.size, self.negative = steps, guidance, size, negative_prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from digzsl_ray.images import png_bytes
        from digzsl_ray.models.sd import generate

        imgs = generate(self.pipe, [str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]], self.steps,
                        self.guidance, batch=len(batch["prompt"]), size=self.size, negative_prompt=self.negative)
        out = dict(batch)
        out["png"] = np.array([png_bytes(im) for im in imgs], dtype=object)
        return out


class Discriminator:
    """The frozen CLIP discriminator: image features at ``image_size`` against the label prototypes,
    grouping softmax over the candidate labels, then the filter policy."""

    def __init__(self, clip: str, clip_pretrained: str, prototypes: str, candidates: list[int], policy: str,
                 threshold: float, top_k: int, extra_threshold: float, parents: dict[int, list[int]],
                 image_size: int, device: str):
        import torch

        from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip, pick_device
        from digzsl_ray.models.vit import set_vit_resolution
        from digzsl_ray.prototypes import load_prototypes

        self.device = pick_device(device)
        self.model, _, _ = load_clip(clip, clip_pretrained, device=self.device)
        set_vit_resolution(self.model.visual, image_size)
        self.size = clip_image_size(self.model)
        self.mean, self.std = clip_norm(self.model)
        protos, self.names, _ = load_prototypes(prototypes)
        self.candidates = list(candidates)
        self.text = protos[self.candidates].to(self.device).float()
        ls = getattr(self.model, "logit_scale", None)
        self.logit_scale = float(ls.detach().exp()) if ls is not None else 100.0
        self.policy, self.threshold, self.top_k, self.extra = policy, threshold, top_k, extra_threshold
        pos = {c: i for i, c in enumerate(self.candidates)}
        self.parents = {pos[k]: [pos[p] for p in v if p in pos] for k, v in parents.items() if k in pos}
        self._torch = torch

    def logits(self, images01):
        import torch.nn.functional as F

        from digzsl_ray.images import normalise, resize_for

        x = normalise(resize_for(images01.to(self.device), self.size), self.mean, self.std)
        with self._torch.no_grad():
            f = F.normalize(self.model.encode_image(x).float(), dim=-1)
        return self.logit_scale * f @ self.text.t()

    def decide(self, images01, targets: list[list[int]]) -> list:
        """One :class:`.discriminator.Decision` per image (label indices are split-wide)."""
        from digzsl_ray.methods.multilabel.discriminator import (
            Decision,
            filter_exact,
            filter_topk_extra,
            grouping_softmax,
        )

        pos = {c: i for i, c in enumerate(self.candidates)}
        t = self._torch.zeros((len(targets), len(self.candidates)), dtype=self._torch.bool)
        for i, ts in enumerate(targets):
            t[i, [pos[int(x)] for x in ts]] = True
        prob = grouping_softmax(self.logits(images01), t.to(self.device)).cpu()
        out = []
        for i, ts in enumerate(targets):
            local = sorted(pos[int(x)] for x in ts)
            if self.policy == "exact":
                d = filter_exact(prob[i], local, self.threshold)
            elif self.policy == "topk_extra":
                d = filter_topk_extra(prob[i], local, self.top_k, self.extra, self.parents)
            else:
                d = Decision(local, prob[i].tolist(), True, local, [], "none: every image accepted")
            c = self.candidates
            out.append(Decision([c[j] for j in d.targets], d.probs, d.accepted, [c[j] for j in d.labels],
                                [c[j] for j in d.added], d.reason))
        return out


class SceneFilter(Discriminator):
    """Ray Data callable class: the discriminator's decision for every generated image of a batch."""

    def __init__(self, threads: int, **kwargs):
        import torch

        torch.set_num_threads(threads)
        super().__init__(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from digzsl_ray.images import decode_png_bytes

        imgs = decode_png_bytes(list(batch["png"]), self.size).float() / 255.0
        decisions = self.decide(imgs, [list(t) for t in batch["targets"]])
        out = dict(batch)
        out["accepted"] = np.array([d.accepted for d in decisions], dtype=bool)
        out["labels"] = np.array([list(d.labels) for d in decisions] + [None], dtype=object)[:-1]
        out["labels_added"] = np.array([list(d.added) for d in decisions] + [None], dtype=object)[:-1]
        out["probs"] = np.array([d.probs for d in decisions] + [None], dtype=object)[:-1]
        out["reason"] = np.array([d.reason for d in decisions], dtype=object)
        return out


def write_shard(path: Path, rows: list[dict], names: list[str], candidates: list[int]) -> None:
    """One shard's rows (sorted by index) as Parquet, atomically; label columns hold names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from digzsl_ray.io import atomic_path

    rows = sorted(rows, key=lambda r: int(r["index"]))
    cand = [names[c] for c in candidates]

    def labels(key):
        return pa.array([[names[int(x)] for x in r[key]] for r in rows], pa.list_(pa.string()))

    table = pa.table({
        "png": pa.array([bytes(r["png"]) for r in rows], pa.binary()),
        "index": pa.array([int(r["index"]) for r in rows], pa.int64()),
        "target_labels": labels("targets"),
        "prompt": pa.array([str(r["prompt"]) for r in rows], pa.string()),
        "seed": pa.array([int(r["seed"]) for r in rows], pa.int64()),
        "accepted": pa.array([bool(r["accepted"]) for r in rows], pa.bool_()),
        "labels": labels("labels"),
        "labels_added": labels("labels_added"),
        "probs": pa.array([[round(float(p), 5) for p in r["probs"]] for r in rows], pa.list_(pa.float32())),
        "reason": pa.array([str(r["reason"]) for r in rows], pa.string()),
        "image_set": pa.array([str(r["image_set"]) for r in rows], pa.string()),
        "shard": pa.array([str(r["shard"]) for r in rows], pa.string()),
    })
    table = table.replace_schema_metadata({"candidate_labels": json.dumps(cand)})
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def read_set(d: Path, columns: list[str] | None = None):
    """Every shard of one image set (the manifest's order) as one pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from digzsl_ray.generation import read_manifest

    m = read_manifest(d)
    if m is None:
        from digzsl_ray.errors import MissingInputError

        raise MissingInputError(f"{d}/_manifest.json: missing; run `digzsl generate` first")
    return pa.concat_tables([pq.read_table(Path(d) / f, columns=columns) for f in m["shards"]])
