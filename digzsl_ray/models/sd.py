"""Sampling helpers shared by every stage that generates images (check, DCT summary, generation).

An image is a pure function of (pipeline, prompt, seed): each image gets its own
``torch.Generator`` seeded with its seed, so batching and retries never change a pixel.

The differentiable pieces (:func:`encode_text`, :func:`denoise` with gradient through the last K
steps, :func:`decode`, :func:`initial_latents`) serve every method that backpropagates a loss on
generated images into the text side (a learned token embedding, a tuned text encoder).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 32,
             prompt_embeds: torch.Tensor | None = None, size: int = 0, negative_prompt: str = "") -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in 0..1 (float32, CPU), one per (prompt, seed).

    ``prompt_embeds`` ([N, 77, D]) may replace ``prompts`` (e.g. with a learned token injected).
    ``size``: image side in pixels (0: the UNet's native ``sample_size``); ``negative_prompt``
    replaces the empty unconditional prompt of classifier-free guidance.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts/seeds: got {len(prompts)} prompts and {len(seeds)} seeds, expected equal lengths")
    out = []
    device = pipe.device
    for i in range(0, len(seeds), batch):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        # Draw the initial latents on the CPU so an image is the same on every device.
        side = latent_side(pipe, size)
        shape = (pipe.unet.config.in_channels, side, side)
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, latents=latents, output_type="pt",
                      height=side * vae_factor(pipe.vae), width=side * vae_factor(pipe.vae))
        if negative_prompt:
            kwargs["negative_prompt"] = [negative_prompt] * len(gens)
        if prompt_embeds is not None:
            kwargs["prompt_embeds"] = prompt_embeds[i : i + batch]
        else:
            kwargs["prompt"] = prompts[i : i + batch]
        img = pipe(**kwargs).images
        out.append(img.float().cpu())
    return torch.cat(out).clamp(0, 1)


def vae_factor(vae) -> int:
    """Pixels per latent cell (8 for SD 1.x/2.x, 4 for MiniWorld's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_side(pipe, size: int = 0) -> int:
    """Latent side for an image of ``size`` pixels (0: the UNet's native ``sample_size``)."""
    if not size:
        return int(pipe.unet.config.sample_size)
    f = vae_factor(pipe.vae)
    if size % f:
        raise ValueError(f"image size {size} is not a multiple of the VAE's factor {f}")
    return size // f


def encode_text(text_encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """SD's conditioning: last hidden states ``[B, 77, D]`` of prompts padded to model_max_length."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0]


def denoise(unet, scheduler, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
            guidance: float, grad_steps: int) -> torch.Tensor:
    """DDIM sampling with classifier-free guidance; only the last ``grad_steps`` steps build a graph."""
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    emb = torch.cat([uncond, cond])
    first_grad = len(timesteps) - min(grad_steps, len(timesteps))
    for i, t in enumerate(timesteps):
        with torch.set_grad_enabled(i >= first_grad and torch.is_grad_enabled()):
            inp = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode to images in 0..1 ``[B, 3, H, W]`` (differentiable)."""
    img = vae.decode(latents / vae.config.scaling_factor).sample
    return (img.float() / 2 + 0.5).clamp(0, 1)


def initial_latents(unet, seeds: list[int], device, dtype, side: int = 0) -> torch.Tensor:
    """One latent per seed, each from its own CPU generator (independent of batching and device);
    ``side``: latent side (0: the UNet's native ``sample_size``)."""
    c, s = unet.config.in_channels, side or unet.config.sample_size
    lat = [torch.randn((c, s, s), generator=torch.Generator("cpu").manual_seed(int(sd))) for sd in seeds]
    return torch.stack(lat).to(device, dtype)


def scaled_latents(unet, scheduler, seeds: list[int], device, dtype, side: int = 0) -> torch.Tensor:
    """Initial latents scaled by the scheduler's ``init_noise_sigma`` (as the pipeline does)."""
    return initial_latents(unet, seeds, device, dtype, side) * scheduler.init_noise_sigma
