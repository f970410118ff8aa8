"""``digzsl pretrain`` (alias ``digzsl miniworld pretrain``): train a tiny CLIP and a tiny Stable Diffusion on Ray Train.

The worker runs the four phases of :mod:`digzsl_ray.pretrain.loops` in order (VAE, then UNet + text encoder on the
VAE's latents, then CLIP, then the VAE decoder alone on the frozen encoder), reports a checkpoint every ``checkpoint_every`` steps and resumes from
the last one after a failure or a rerun with the same output directory. Rank 0 exports:

```
OUT/sd/     diffusers StableDiffusionPipeline folder (model_index.json, vae/, unet/, text_encoder/,
            tokenizer/, scheduler/) -- loadable with StableDiffusionPipeline.from_pretrained(OUT/sd)
OUT/clip/   open_clip folder (open_clip_config.json + open_clip_model.safetensors) -- loadable with
            open_clip.create_model_and_transforms("local-dir:OUT/clip")
OUT/pretrain.json   config, losses, seconds per phase
```
One CPU worker here; N GPU workers on a cluster (gradients averaged across workers).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from digzsl_ray.config import PretrainConfig
from digzsl_ray.io import write_json
from digzsl_ray.pretrain.arch import (
    CLIP_MEAN,
    CLIP_STD,
    ClipArch,
    SDArch,
    scheduler_config,
    text_config,
    unet_config,
    vae_config,
)
from digzsl_ray.pretrain.loops import (
    PhaseState,
    encode_latents,
    train_clip,
    train_sd,
    train_vae,
    train_vae_decoder,
)


def build_models(sd_arch: SDArch, clip_arch: ClipArch, seed: int):
    """Freshly initialised (vae, unet, text_encoder, clip), deterministic in ``seed``."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(sd_arch))
    unet = UNet2DConditionModel(**unet_config(sd_arch))
    te = CLIPTextModel(CLIPTextConfig(**text_config(sd_arch)))
    clip = open_clip.CLIP(**clip_arch.model_cfg())
    return vae, unet, te, clip


def export_sd(vae, unet, text_encoder, tokenizer, out: Path, dtype: str = "fp16") -> None:
    """Write a standard diffusers StableDiffusionPipeline folder (DDIM scheduler, no safety checker)."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    cast = torch.float16 if dtype == "fp16" else torch.float32
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to("cpu", cast), text_encoder=copy.deepcopy(text_encoder).to("cpu", cast),
        tokenizer=tokenizer, unet=copy.deepcopy(unet).to("cpu", cast),
        scheduler=DDIMScheduler(**scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def export_clip(clip, arch: ClipArch, out: Path, dtype: str = "fp16") -> None:
    """Write an open_clip local-dir folder (the layout of open_clip's hf-hub repos)."""
    from safetensors.torch import save_file

    cast = torch.float16 if dtype == "fp16" else torch.float32
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu", cast if v.is_floating_point() else v.dtype).contiguous()
             for k, v in clip.state_dict().items()}
    save_file(state, str(tmp / "open_clip_model.safetensors"))
    cfg = {
        "model_cfg": arch.model_cfg(),
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def pretrain_worker(config: dict) -> None:
    """Ray Train worker: all phases, with checkpoints and resume. ``config`` = plain dict (see run_pretrain)."""
    import ray.train
    import ray.train.torch
    from diffusers import DDPMScheduler

    from digzsl_ray.data.captioned import load_images, read_captioned_folder
    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.models.tokenizer import build_clip_tokenizer

    quiet_train_worker_logs()
    # 1. Rebuild the typed config; pin threads to the CPUs this worker holds.
    cfg = PretrainConfig(**config["cfg"])
    sd_arch, clip_arch = SDArch(image_size=cfg.image_size), ClipArch(image_size=cfg.image_size)
    torch.set_num_threads(cfg.cpus_per_worker)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    seed = cfg.seed * 1000 + rank  # workers draw different batches

    # 2. Data: the whole folder in memory as uint8 (this job targets small captioned folders).
    folder = read_captioned_folder(config["data"], check_images=False)
    images = torch.from_numpy(load_images(folder, cfg.image_size))
    tok = build_clip_tokenizer(sd_arch.max_length)
    sd_ids = torch.tensor(tok(folder.captions, padding="max_length", max_length=sd_arch.max_length,
                              truncation=True).input_ids)
    empty_ids = torch.tensor(tok([""], padding="max_length", max_length=sd_arch.max_length).input_ids[0])
    import open_clip

    clip_tok = open_clip.SimpleTokenizer(context_length=clip_arch.context_length)
    clip_ids = clip_tok(folder.captions)

    # 3. Models and resume state.
    vae, unet, te, clip = build_models(sd_arch, clip_arch, cfg.seed)
    for m in (vae, unet, te, clip):
        m.to(device)
    state = restore_state() or {}
    if state:
        for key, m in (("vae", vae), ("unet", unet), ("text_encoder", te), ("clip", clip)):
            if key in state:
                m.load_state_dict(state[key])
    phases = {k: PhaseState(**v) for k, v in state.get("phases", {}).items()}
    saved: dict = dict(state)

    def report(metrics: dict, lazy_state) -> None:
        phase = metrics["phase"]
        phases[phase] = PhaseState(step=metrics["step"], seconds=metrics["seconds"],
                                   losses=list(current[phase].losses or []))
        step = metrics["step"]
        total = {"vae": cfg.vae_steps, "sd": cfg.sd_steps, "clip": cfg.clip_steps,
                 "vae_decoder": cfg.vae_decoder_steps}[phase]
        if step % cfg.checkpoint_every != 0 and step != total:
            ray.train.report(metrics)
            return
        saved.update({k: v for k, v in lazy_state().items()})
        saved["phases"] = {k: asdict(v) for k, v in phases.items()}
        report_state(metrics, saved, rank)

    current: dict[str, PhaseState] = {}
    progress = rank == 0
    common = dict(report=report, every=cfg.report_every, progress=progress, device=device, precision=cfg.precision)

    # 4. VAE.
    current["vae"] = phases.get("vae", PhaseState())
    train_vae(vae, images, cfg.vae_steps, cfg.vae_batch, cfg.vae_lr, cfg.vae_kl, current["vae"],
              state.get("vae_opt"), seed=seed, **common)

    # 5. UNet + text encoder on the (frozen) VAE's latents; scaling factor = 1 / std of latents.
    vae.requires_grad_(False)
    lat_mean, lat_std = encode_latents(vae, images, device=device)
    scaling = float(1.0 / lat_mean.std())
    vae.register_to_config(scaling_factor=scaling)
    noise_sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "set_alpha_to_one"})
    current["sd"] = phases.get("sd", PhaseState())
    train_sd(unet, te, noise_sched, lat_mean, lat_std, sd_ids, empty_ids, scaling, cfg.sd_steps, cfg.sd_batch,
             cfg.sd_lr, cfg.cfg_dropout, current["sd"], state.get("sd_opt"), seed=seed, **common)

    # 6. CLIP.
    current["clip"] = phases.get("clip", PhaseState())
    train_clip(clip, images, clip_ids, cfg.clip_steps, cfg.clip_batch, cfg.clip_lr, current["clip"],
               state.get("clip_opt"), seed=seed, **common)

    # 7. The VAE decoder alone on the frozen encoder: latents (and the UNet trained on them) stay as they are.
    current["vae_decoder"] = phases.get("vae_decoder", PhaseState())
    train_vae_decoder(vae, images, cfg.vae_decoder_steps, cfg.vae_batch, cfg.vae_decoder_lr, current["vae_decoder"],
                      state.get("vae_decoder_opt"), seed=seed, **common)

    # 8. Export (rank 0).
    if rank == 0:
        out = Path(config["out"])
        for m in (vae, unet, te, clip):
            m.eval()
        export_sd(vae, unet, te, tok, out / "sd", cfg.ship_dtype)
        export_clip(clip, clip_arch, out / "clip", cfg.ship_dtype)
        write_json(out / "pretrain.json", {
            "config": cfg.model_dump(), "data": str(config["data"]), "images": len(folder),
            "vae_scaling_factor": scaling,
            "phases": {k: asdict(v) for k, v in current.items()},
        })


def run_pretrain(data: str | Path, out: str | Path, cfg: PretrainConfig, storage: str | Path | None = None) -> dict:
    """Validate the folder, then run :func:`pretrain_worker` on Ray Train; returns pretrain.json."""
    from digzsl_ray.data.captioned import read_captioned_folder
    from digzsl_ray.distributed.trainloop import make_trainer

    out = Path(out).resolve()
    read_captioned_folder(data, check_images=True)  # 1. refuse bad input before any model work
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(storage or out / "ray_train").resolve()
    t0 = time.time()
    trainer = make_trainer(
        pretrain_worker, {"cfg": cfg.model_dump(), "data": str(Path(data).resolve()), "out": str(out)},
        name="pretrain", storage=storage, num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
        cpus_per_worker=cfg.cpus_per_worker, max_failures=2, keep=1)
    trainer.fit()
    meta = json.loads((out / "pretrain.json").read_text())
    meta["wall_seconds"] = round(time.time() - t0, 1)
    write_json(out / "pretrain.json", meta)
    return meta
