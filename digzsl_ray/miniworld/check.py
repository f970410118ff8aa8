"""``digzsl miniworld check``: measure the shipped MiniWorld models through the real loaders.

Every figure is an accuracy in percent, judged by the oracle on fresh images (never training
seeds). Keys are a contract (other checks read them): ``clip_zero_shot_top1``, ``oracle_acc``,
``sd_plain_prompt_oracle_acc`` (+ ``sd_plain_prompt_per_class``), ``sd_rare_class_oracle_acc``,
``sd_common_class_oracle_acc``, ``sd_unseen_class_oracle_acc``, ``vae_recon_oracle_acc``,
``vae_recon_oracle_acc_min_attribute``, ``sd_guidance_scale``, ``sd_seconds_per_image``,
``clip_zero_shot_per_name_kind``, ``clip_zero_shot_unseen_zsl`` and ``targets`` (every calibration
target of docs/DESIGN.md section 6 with its value and whether it is met; ``--run`` adds the targets that a
finished ``make demo`` run measures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from digzsl_ray.config import RunConfig
from digzsl_ray.miniworld import world
from digzsl_ray.miniworld.make import WorldParams
from digzsl_ray.miniworld.oracle import (
    evaluate_oracle,
    load_oracle,
    oracle_predict,
    render_batch,
)
from digzsl_ray.models.presets import ASSETS, clip_norm, load_clip, load_sd_pipeline
from digzsl_ray.models.sd import generate
from digzsl_ray.prototypes import build_prototypes

# Fresh render streams used only by this check (disjoint from corpus, benchmark and oracle training).
STREAM_CLIP, STREAM_VAE = 60, 61
SEED_GENERATION = 5_000_000


# How the check samples: the plain prompt of the ablation and the library's default sampler settings
# (the same as the defaults of the generation stage, measured independently of any method's config).
PLAIN_TEMPLATE, GUIDANCE, STEPS = "a photo of a {name}", 3.0, 20


def plain_prompt(name: str) -> str:
    return PLAIN_TEMPLATE.format(name=name)


def world_facts(world_dir: str | Path | None) -> tuple[dict[str, int], list[str]]:
    """(corpus frequency per class, unseen classes) of a rendered world, or of the default world."""
    if world_dir:
        meta = json.loads((Path(world_dir) / "world.json").read_text())
        return meta["corpus_frequency"], meta["unseen"]
    p = WorldParams()
    freqs = world.class_frequencies(p.seed, p.corpus_size, p.head, p.tail)
    return freqs, world.choose_unseen(p.seed, p.n_unseen)


def quarters(freqs: dict[str, int]) -> tuple[list[str], list[str]]:
    """(most common quarter, rarest quarter) of the classes by corpus frequency."""
    order = sorted(freqs, key=lambda k: (-freqs[k], k))
    q = len(order) // 4
    return order[:q], order[-q:]


@torch.no_grad()
def clip_zero_shot(clip_ref: str, unseen: list[str] | None = None, n_per_class: int = 20,
                   seed: int = 0) -> dict:
    """CLIP zero-shot top-1 on fresh renders: over all classes (``top1``), per kind of class name
    (``per_name_kind``), and among the unseen classes only (``unseen_zsl``, the ZSL task)."""
    model, _, tokenizer = load_clip(clip_ref)
    specs = world.all_classes()
    protos = build_prototypes(model, tokenizer, [s.name for s in specs], RunConfig().prototypes.templates)
    labels = np.repeat(np.arange(len(specs)), n_per_class)
    x = render_batch(specs, labels, seed, STREAM_CLIP, 0)
    mean, std = clip_norm(model)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    feats = torch.cat([torch.nn.functional.normalize(model.encode_image(x[i : i + 512]).float(), dim=-1)
                       for i in range(0, len(x), 512)])
    sims = (feats @ protos.t()).numpy()
    ok = sims.argmax(1) == labels
    kinds = np.array([specs[k].name_kind for k in labels])
    out = {"top1": float(ok.mean() * 100),
           "per_name_kind": {k: round(float(ok[kinds == k].mean() * 100), 2) for k in world.NAME_KINDS
                             if (kinds == k).any()}}
    if unseen:
        ui = np.array([i for i, s in enumerate(specs) if s.name in set(unseen)])
        m = np.isin(labels, ui)
        out["unseen_zsl"] = float((ui[sims[m][:, ui].argmax(1)] == labels[m]).mean() * 100)
    return out


@torch.no_grad()
def vae_recon(pipe, oracle, n_per_class: int = 20, seed: int = 0) -> tuple[float, dict[str, float]]:
    specs = world.all_classes()
    labels = np.repeat(np.arange(len(specs)), n_per_class)
    x = render_batch(specs, labels, seed, STREAM_VAE, 0)
    vae = pipe.vae
    recs = []
    for i in range(0, len(x), 256):
        xb = (x[i : i + 256] * 2 - 1).to(pipe.device, vae.dtype)
        recs.append(((vae.decode(vae.encode(xb).latent_dist.mean).sample.float().cpu() + 1) / 2).clamp(0, 1))
    ok = oracle_predict(oracle, torch.cat(recs)).numpy() == labels
    per = {}
    for attr, values in world.ATTRIBUTES.items():
        for v in values:
            m = np.array([getattr(specs[l], attr) == v for l in labels])
            per[f"{attr}={v}"] = round(float(ok[m].mean() * 100), 2)
    return float(ok.mean() * 100), per


def sd_plain_prompt(pipe, oracle, n_per_class: int, guidance: float, steps: int, progress: bool) -> tuple[dict, float]:
    specs = world.all_classes()
    acc: dict[str, float] = {}
    t0 = time.time()
    for ci, s in enumerate(tqdm(specs, desc="sd plain prompts", disable=not progress, mininterval=2.0)):
        seeds = [SEED_GENERATION + ci * 1000 + j for j in range(n_per_class)]
        imgs = generate(pipe, [plain_prompt(s.name)] * n_per_class, seeds, steps, guidance, batch=n_per_class)
        acc[s.name] = round(float((oracle_predict(oracle, imgs).numpy() == ci).mean() * 100), 2)
    return acc, (time.time() - t0) / (len(specs) * n_per_class)


def run_check(assets: str | Path | None = None, world_dir: str | Path | None = None, n_per_class: int = 24,
              progress: bool = True) -> dict:
    assets = Path(assets) if assets else ASSETS
    guidance, steps = GUIDANCE, STEPS
    freqs, unseen = world_facts(world_dir)
    oracle, names = load_oracle(assets / "oracle")
    if names != [s.name for s in world.all_classes()]:
        raise ValueError(f"{assets / 'oracle'}: oracle classes differ from this MiniWorld's classes")

    out: dict = {}
    out["oracle_acc"] = round(evaluate_oracle(oracle, seed=777, n_per_class=20), 2)
    zs = clip_zero_shot(f"local-dir:{assets / 'clip'}", unseen)
    out["clip_zero_shot_top1"] = round(zs["top1"], 2)
    out["clip_zero_shot_per_name_kind"] = zs["per_name_kind"]
    if "unseen_zsl" in zs:
        out["clip_zero_shot_unseen_zsl"] = round(zs["unseen_zsl"], 2)
    pipe = load_sd_pipeline(str(assets / "sd"), device="cpu")
    recon, per_attr = vae_recon(pipe, oracle)
    out["vae_recon_oracle_acc"] = round(recon, 2)
    out["vae_recon_oracle_acc_min_attribute"] = min(per_attr.values())
    out["vae_recon_per_attribute"] = per_attr
    per_class, spi = sd_plain_prompt(pipe, oracle, n_per_class, guidance, steps, progress)
    common, rare = quarters(freqs)
    out["sd_plain_prompt_oracle_acc"] = round(float(np.mean(list(per_class.values()))), 2)
    out["sd_common_class_oracle_acc"] = round(float(np.mean([per_class[c] for c in common])), 2)
    out["sd_rare_class_oracle_acc"] = round(float(np.mean([per_class[c] for c in rare])), 2)
    out["sd_unseen_class_oracle_acc"] = round(float(np.mean([per_class[c] for c in unseen])), 2)
    out["sd_plain_prompt_per_class"] = per_class
    out["sd_guidance_scale"] = guidance
    out["sd_num_inference_steps"] = steps
    out["sd_seconds_per_image"] = round(spi, 4)
    out["images_per_class"] = n_per_class
    out["torch_threads"] = torch.get_num_threads()
    out["targets"] = targets(out)
    return out


# The calibration targets (docs/DESIGN.md section 6): MiniWorld must be hard in the ways real benchmarks are.
# Anchors: CLIP / LiT zero-shot top-1 on CUB-200 is about 52 / 64.
def targets(check: dict, run: dict | None = None) -> dict:
    """``{key: {"value", "target", "ok"}}`` for the check's figures and, given ``run`` (see
    :func:`run_figures`), for the figures of a finished ``make demo``."""
    t: dict = {}

    def add(key: str, value, target: str, ok: bool) -> None:
        t[key] = {"value": value, "target": target, "ok": bool(ok)}

    z = check["clip_zero_shot_top1"]
    add("clip_zero_shot_top1", z, "45..70", 45 <= z <= 70)
    gap = round(check["sd_common_class_oracle_acc"] - check["sd_rare_class_oracle_acc"], 2)
    add("sd_common_minus_rare", gap, ">= 10", gap >= 10)
    add("sd_unseen_class_oracle_acc", check["sd_unseen_class_oracle_acc"], "<= 85",
        check["sd_unseen_class_oracle_acc"] <= 85)
    add("oracle_acc", check["oracle_acc"], ">= 98", check["oracle_acc"] >= 98)
    add("vae_recon_oracle_acc_min_attribute", check["vae_recon_oracle_acc_min_attribute"], ">= 95",
        check["vae_recon_oracle_acc_min_attribute"] >= 95)
    if run:
        add("no_synthetic_zsl_top1", run["no_synthetic_zsl_top1"], "<= 80", run["no_synthetic_zsl_top1"] <= 80)
        add("no_synthetic_uncalibrated_S_minus_U", run["no_synthetic_uncalibrated_S_minus_U"], ">= 20",
            run["no_synthetic_uncalibrated_S_minus_U"] >= 20)
        add("demo_pipeline_minutes", run["demo_pipeline_minutes"], "< 20", run["demo_pipeline_minutes"] < 20)
        add("demo_peak_memory_gb", run["demo_peak_memory_gb"], "< 10", run["demo_peak_memory_gb"] < 10)
    return t


def run_figures(run_dir: str | Path) -> dict:
    """The demo's figures the targets name, from a finished run directory (metrics.json, evaluation.json)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ev = json.loads((run_dir / "evaluation.json").read_text())
    ns = ev["variants"]["no_synthetic"]
    return {
        "no_synthetic_zsl_top1": round(float(ns["zsl_top1"]), 2),
        "no_synthetic_uncalibrated_S_minus_U": round(float(ns["uncalibrated"]["gzsl_S"] - ns["uncalibrated"]["gzsl_U"]), 2),
        # the `digzsl run` invocation's wall time (Ray start and report included), or the stage times'
        # sum when the last invocation redid only part of the run
        "demo_pipeline_minutes": round(max(float(metrics.get("wall_s_this_invocation") or 0.0),
                                           sum(metrics.get("timing_s", {}).values())) / 60, 2),
        "demo_peak_memory_gb": round(float(metrics.get("peak_rss_mb", 0.0)) / 1024, 2),  # GiB
    }


def format_check(r: dict) -> str:
    keys = ["clip_zero_shot_top1", "oracle_acc", "sd_plain_prompt_oracle_acc", "sd_common_class_oracle_acc",
            "sd_rare_class_oracle_acc", "sd_unseen_class_oracle_acc", "vae_recon_oracle_acc",
            "vae_recon_oracle_acc_min_attribute", "sd_guidance_scale", "sd_seconds_per_image"]
    lines = [f"{k:<36} {r[k]}" for k in keys]
    if "clip_zero_shot_unseen_zsl" in r:
        lines.insert(1, f"{'clip_zero_shot_unseen_zsl':<36} {r['clip_zero_shot_unseen_zsl']}")
    lines.append(f"{'clip_zero_shot_per_name_kind':<36} " + ", ".join(
        f"{k} {v}" for k, v in r.get("clip_zero_shot_per_name_kind", {}).items()))
    lines.append("targets:")
    for k, v in r.get("targets", {}).items():
        lines.append(f"  {'ok  ' if v['ok'] else 'MISS'} {k:<40} {v['value']!s:>8}  (target {v['target']})")
    return "\n".join(lines)
