"""Discriminative tuning of the SD text encoder (Diff-ZS-MLC ``generate_image_*/inpainting_diff.py``).

One step, for a batch of (prompt, target label set, seed):

1. encode the prompts with the (trainable) text encoder; classifier-free guidance with the empty
   prompt, whose embedding is also recomputed through the trainable encoder, as in the reference;
2. DDIM sampling from seeded latents: the first T-K steps without gradient, the last K with it
   (the reference takes the gradient through all 30 steps with UNet checkpointing; K is ours to
   fit CPU and small GPUs, K = T reproduces it);
3. the VAE decoder with gradient, images resized and normalised for the frozen CLIP;
4. CLIP logits ``logit_scale * cos(image, text(label name))`` over the candidate labels, the
   grouping softmax (:func:`.discriminator.grouping_softmax`) and the asymmetric loss
   (gamma_neg 4, gamma_pos 0, clip 0.05) against the multi-hot targets;
5. an AdamW step on the text encoder only (UNet, VAE and CLIP frozen). A non-finite gradient is
   zeroed and the step skipped (the reference zeroes NaN gradients); gradient norm clipped at 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from digzsl_ray.methods.multilabel.discriminator import grouping_softmax
from digzsl_ray.methods.multilabel.losses import asymmetric_loss
from digzsl_ray.models.sd import decode, denoise, encode_text, scaled_latents

if TYPE_CHECKING:
    from digzsl_ray.methods.multilabel.config import TuneConfig


class TextEncoderTuner:
    """Holds the pipeline, the frozen CLIP and the label text features; :meth:`step` does one update."""

    MAX_GRAD_NORM = 1.0

    def __init__(self, pipe, clip_model, clip_tokenizer, labels: list[str], settings: TuneConfig,
                 mean: tuple[float, ...], std: tuple[float, ...], image_size: int, text: torch.Tensor | None = None,
                 latent_side: int = 0):
        """``settings``: the run's ``tune`` section (denoising and gradient steps, guidance, AdamW,
        the asymmetric loss); ``latent_side``: the latents' side (0: the UNet's native sample_size)."""
        self.pipe, self.clip, self.s = pipe, clip_model.eval(), settings
        self.latent_side = latent_side
        self.device = pipe.device
        for m in (pipe.unet, pipe.vae, clip_model):
            m.requires_grad_(False)
        pipe.text_encoder.requires_grad_(True)
        pipe.text_encoder.train()
        if text is not None:  # the run's prototypes (prompt ensemble), so tuning and filter agree
            self.text = F.normalize(text.to(self.device).float(), dim=-1)
        else:
            with torch.no_grad():
                self.text = F.normalize(clip_model.encode_text(clip_tokenizer(labels).to(self.device)).float(), dim=-1)
        self.logit_scale = float(clip_model.logit_scale.exp()) if hasattr(clip_model, "logit_scale") else 100.0
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.size = image_size
        self.opt = torch.optim.AdamW(pipe.text_encoder.parameters(), lr=settings.lr, betas=(0.9, 0.999),
                                     weight_decay=settings.weight_decay, eps=1e-8)

    def probabilities(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        f = F.normalize(self.clip.encode_image((x - self.mean) / self.std).float(), dim=-1)
        return grouping_softmax(self.logit_scale * f @ self.text.t(), targets)

    def images(self, prompts: list[str], seeds: list[int], grad: bool) -> torch.Tensor:
        p, s = self.pipe, self.s
        with torch.set_grad_enabled(grad):
            dt = p.unet.dtype  # a fp32 encoder (trained) feeding a half-precision UNet on GPU
            cond = encode_text(p.text_encoder, p.tokenizer, prompts, self.device).to(dt)
            uncond = encode_text(p.text_encoder, p.tokenizer, [""], self.device).to(dt).expand(len(prompts), -1, -1)
            p.scheduler.set_timesteps(s.num_inference_steps, device=self.device)
            lat = scaled_latents(p.unet, p.scheduler, seeds, self.device, p.unet.dtype, self.latent_side)
            lat = denoise(p.unet, p.scheduler, lat, cond, uncond, s.num_inference_steps, s.guidance_scale,
                          s.grad_steps if grad else 0)
            return decode(p.vae, lat)

    def step(self, prompts: list[str], targets: torch.Tensor, seeds: list[int]) -> dict:
        """One update; ``targets`` boolean ``[B, C]`` over the tuner's labels. Returns loss and whether applied."""
        imgs = self.images(prompts, seeds, grad=True)
        prob = self.probabilities(imgs, targets.to(self.device))
        loss = asymmetric_loss(prob, targets.to(self.device), self.s.gamma_neg, self.s.gamma_pos, self.s.clip)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [q for q in self.pipe.text_encoder.parameters() if q.grad is not None]
        finite = all(torch.isfinite(q.grad).all() for q in params) and math.isfinite(float(loss.detach()))
        if finite:
            torch.nn.utils.clip_grad_norm_(params, self.MAX_GRAD_NORM)
            self.opt.step()
        else:
            self.opt.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), "applied": finite,
                "target_prob": float((prob.detach() * targets.to(self.device)).sum() / targets.sum())}
