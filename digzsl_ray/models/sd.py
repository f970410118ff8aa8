"""Sampling helpers shared by every stage that generates images (check, DCT summary, generation).

An image is a pure function of (pipeline, prompt, seed): each image gets its own
``torch.Generator`` seeded with its seed, so batching and retries never change a pixel.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 32,
             prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in 0..1 (float32, CPU), one per (prompt, seed).

    ``prompt_embeds`` ([N, 77, D]) may replace ``prompts`` (e.g. with a learned token injected).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts/seeds: got {len(prompts)} prompts and {len(seeds)} seeds, expected equal lengths")
    out = []
    device = pipe.device
    for i in range(0, len(seeds), batch):
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        # Draw the initial latents on the CPU so an image is the same on every device.
        shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, latents=latents, output_type="pt")
        if prompt_embeds is not None:
            kwargs["prompt_embeds"] = prompt_embeds[i : i + batch]
        else:
            kwargs["prompt"] = prompts[i : i + batch]
        img = pipe(**kwargs).images
        out.append(img.float().cpu())
    return torch.cat(out).clamp(0, 1)
