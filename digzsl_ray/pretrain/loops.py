"""Generic foundation-model pretraining from a captioned image folder (plain torch maths).

Four phases, each a resumable loop over in-memory uint8 images:

1. ``vae``:  AutoencoderKL, L1 + edge L1 + KL (beta) reconstruction loss.
2. ``sd``:   UNet2DConditionModel + CLIPTextModel on frozen VAE latents, epsilon prediction with
             SD 1.5's noise schedule; captions dropped to "" with probability ``cfg_dropout`` so
             classifier-free guidance works.
3. ``clip``: open_clip CLIP (ViT + text transformer), symmetric InfoNCE with a learned scale.
4. ``vae_decoder``: the VAE decoder alone fine-tuned on the frozen encoder's latents (L1 + edge
             L1), as Stability's ``sd-vae-ft-mse`` was: the latent space, hence the UNet trained on
             it, is unchanged, and reconstructions keep fine attributes the joint phase blurs.

The Ray Train wrapper (:mod:`digzsl_ray.pretrain.job`) runs these phases in a worker, reports checkpoints and
resumes; :func:`export_sd` / :func:`export_clip` write the standard formats.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from digzsl_ray.pretrain.arch import CLIP_MEAN, CLIP_STD

ReportFn = Callable[[dict, Callable[[], dict]], None]  # (metrics, lazy state to checkpoint) -> None


def allreduce_grads(params) -> None:
    """Average gradients across data-parallel workers (no-op in a single process).

    Used instead of DDP wrapping because the loops call sub-module methods (``vae.encode``),
    which would bypass DDP's forward hooks and silently skip gradient synchronisation.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    w = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(w)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; a no-op context on CPU."""
    enabled = device.type == "cuda" and precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class PhaseState:
    """Where a phase stands; restored from a checkpoint on resume."""

    step: int = 0
    seconds: float = 0.0
    losses: list | None = None


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def to_unit(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float in [-1, 1] (the VAE's input range)."""
    return x_uint8.float().div(127.5).sub(1.0)


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences (keeps stripes and dots sharp)."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def optimise(opt, loss: torch.Tensor, params, max_norm: float | None = 1.0) -> float:
    """One data-parallel step: backward, average gradients across workers, clip, apply; the loss value."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    allreduce_grads(params)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return float(loss.detach())


def _loop(
    name: str,
    total_steps: int,
    state: PhaseState,
    step_fn: Callable[[int], float],
    report: ReportFn,
    every: int,
    progress: bool,
    extra_state: Callable[[], dict],
) -> PhaseState:
    from tqdm.auto import tqdm

    state.losses = state.losses or []
    bar = tqdm(total=total_steps, initial=state.step, desc=name, disable=not progress, mininterval=2.0)
    window: list[float] = []
    while state.step < total_steps:
        t0 = time.time()
        loss = step_fn(state.step)
        state.seconds += time.time() - t0
        state.step += 1
        window.append(loss)
        bar.update(1)
        if state.step % every == 0 or state.step == total_steps:
            mean = float(np.mean(window))
            window = []
            state.losses.append([state.step, round(mean, 5)])
            bar.set_postfix(loss=f"{mean:.4f}")
            report({"phase": name, "step": state.step, "loss": mean, "seconds": round(state.seconds, 1)},
                   extra_state)
    bar.close()
    return state


# 1. VAE -----------------------------------------------------------------------------------------
def train_vae(vae, images: torch.Tensor, steps: int, batch: int, lr: float, kl_weight: float,
              state: PhaseState, opt_state: dict | None, report: ReportFn, every: int, seed: int,
              progress: bool = True, device: torch.device = torch.device("cpu"), precision: str = "fp32") -> PhaseState:
    """Train ``vae`` on ``images`` (uint8 ``[N, 3, H, W]``, kept on the CPU; batches move to ``device``)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    if opt_state:
        opt.load_state_dict(opt_state)
    vae.train()

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = to_unit(images[idx]).to(device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        with autocast(device, precision):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
            rec = vae.decode(z).sample.float()
            loss = (rec - x).abs().mean() + 0.5 * edge_l1(rec, x) + kl_weight * post.kl().mean()
        return optimise(opt, loss, vae.parameters())

    return _loop("vae", steps, state, step_fn, report, every, progress,
                 lambda: {"vae": vae.state_dict(), "vae_opt": opt.state_dict()})


def train_vae_decoder(vae, images: torch.Tensor, steps: int, batch: int, lr: float, state: PhaseState,
                      opt_state: dict | None, report: ReportFn, every: int, seed: int, progress: bool = True,
                      device: torch.device = torch.device("cpu"), precision: str = "fp32") -> PhaseState:
    """Fine-tune ``vae.decoder`` and ``vae.post_quant_conv`` on latents drawn from the frozen encoder."""
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if opt_state:
        opt.load_state_dict(opt_state)
    vae.eval()
    vae.decoder.train()

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7_000_000 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = to_unit(images[idx]).to(device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        with autocast(device, precision):
            with torch.no_grad():
                post = vae.encode(x).latent_dist
                z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
            rec = vae.decode(z).sample.float()
            loss = (rec - x).abs().mean() + 0.5 * edge_l1(rec, x)
        return optimise(opt, loss, params)

    out = _loop("vae_decoder", steps, state, step_fn, report, every, progress,
                lambda: {"vae": vae.state_dict(), "vae_decoder_opt": opt.state_dict()})
    vae.requires_grad_(False)
    return out


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256,
                   device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ``(mean, std)`` of every image, each ``[N, C, h, w]`` on the CPU."""
    vae.eval()
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(to_unit(images[i : i + batch]).to(device)).latent_dist
        means.append(d.mean.float().cpu())
        stds.append(d.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


# 2. Stable Diffusion: UNet + text encoder -------------------------------------------------------
def train_sd(unet, text_encoder, noise_scheduler, lat_mean: torch.Tensor, lat_std: torch.Tensor,
             token_ids: torch.Tensor, empty_ids: torch.Tensor, scaling_factor: float, steps: int,
             batch: int, lr: float, cfg_dropout: float, state: PhaseState, opt_state: dict | None,
             report: ReportFn, every: int, seed: int, progress: bool = True,
             device: torch.device = torch.device("cpu"), precision: str = "fp32") -> PhaseState:
    """Denoising loss on VAE latents conditioned on caption token ids ``[N, 77]``."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if opt_state:
        opt.load_state_dict(opt_state)
    unet.train()
    text_encoder.train()
    T = noise_scheduler.config.num_train_timesteps

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(lat_mean), (batch,), generator=g)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scaling_factor
        ids = token_ids[idx].clone()
        drop = torch.rand(batch, generator=g) < cfg_dropout
        ids[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, T, (batch,), generator=g)
        zt = noise_scheduler.add_noise(z0, noise, t)
        zt, t, ids, noise = zt.to(device), t.to(device), ids.to(device), noise.to(device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        with autocast(device, precision):
            cond = text_encoder(ids).last_hidden_state
            pred = unet(zt, t, cond).sample.float()
        loss = F.mse_loss(pred, noise)
        return optimise(opt, loss, params)

    return _loop("sd", steps, state, step_fn, report, every, progress,
                 lambda: {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                          "sd_opt": opt.state_dict()})


# 3. CLIP ---------------------------------------------------------------------------------------
def clip_normalise(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def train_clip(clip, images: torch.Tensor, token_ids: torch.Tensor, steps: int, batch: int, lr: float,
               state: PhaseState, opt_state: dict | None, report: ReportFn, every: int, seed: int,
               progress: bool = True, device: torch.device = torch.device("cpu"), precision: str = "fp32") -> PhaseState:
    """Symmetric InfoNCE between images and their captions (open_clip's CLIP forward)."""
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    if opt_state:
        opt.load_state_dict(opt_state)
    clip.train()

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = clip_normalise(images[idx].float().div(255.0).to(device))
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        with autocast(device, precision):
            img, txt, scale = clip(x, token_ids[idx].to(device))[:3]
            logits = (scale * img @ txt.t()).float()
        labels = torch.arange(batch, device=device)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        value = optimise(opt, loss, clip.parameters(), max_norm=None)
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        return value

    return _loop("clip", steps, state, step_fn, report, every, progress,
                 lambda: {"clip": clip.state_dict(), "clip_opt": opt.state_dict()})
