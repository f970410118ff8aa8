"""Discriminative class tokens (DCT), the maths of DIG-ZSL's token learning (plain torch).

For an unseen class c with name n_c, a placeholder token S*_c is added to the Stable Diffusion
tokenizer and text encoder, initialised from a word of the name, and used in prompts such as
"a photo of a S*_c n_c". Each update:

1. generates a batch with classifier-free guidance from seeded latents; the first T-K DDIM steps
   run without gradient, the last K steps and the VAE decoder with gradient;
2. resizes and normalises the images differentiably into the CDM;
3. takes the cross-entropy of the CDM's cosine logits restricted to the unseen classes (or all);
4. updates only the placeholder's embedding row: the row is a separate parameter injected by a
   forward hook on the token embedding, whose weight never receives a gradient, so every other row
   stays bitwise unchanged.

Stops when the CDM accuracy on the update's images reaches ``gamma`` (after ``min_updates``),
after ``patience`` updates without loss improvement, or at ``max_updates``; the reason is recorded.
Everything is a function of (class name, seed): image j of update u starts from latents drawn by a
generator seeded with ``class_seed(name, seed, "dct-train") + u * batch + j``; fresh evaluation
images and generated images use other tags, so they never reuse training latents.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from digzsl_ray.errors import UserError
from digzsl_ray.methods.digzsl.generation import prompts_for
from digzsl_ray.methods.digzsl.config import TokensConfig
from digzsl_ray.models.sd import decode, denoise, encode_text, scaled_latents
from digzsl_ray.seeds import class_seed


class TokenError(UserError):
    """Bad placeholder or initialiser word."""


def placeholder_for(slug: str, pattern: str = "<dct-{slug}>") -> str:
    return pattern.format(slug=slug)


def init_word_for(name: str, configured: str = "") -> str:
    """The configured word, or the last word of the class name (its head noun in English)."""
    if configured:
        return configured
    words = name.split()
    if not words:
        raise TokenError(f"class name: got {name!r}, expected at least one word to initialise its token")
    return words[-1]


def add_placeholder(tokenizer, text_encoder, token: str, init_word: str) -> tuple[int, torch.Tensor]:
    """Add ``token`` and set its embedding row to the mean embedding of ``init_word``'s sub-tokens.

    Returns ``(token_id, initial vector)``. Raises :class:`TokenError` if the token already exists.
    """
    if token in tokenizer.get_vocab():
        raise TokenError(f"placeholder {token!r} already exists in the tokenizer; choose another "
                         f"tokens.placeholder pattern")
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise TokenError(f"init word {init_word!r} encodes to no tokens")
    if tokenizer.add_tokens([token]) != 1:
        raise TokenError(f"placeholder {token!r} could not be added to the tokenizer")
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        vec = emb[init_ids].float().mean(0)
        emb[token_id] = vec.to(emb.dtype)
    return token_id, vec.detach().clone().cpu()


@contextlib.contextmanager
def injected_row(text_encoder, token_id: int, row: torch.Tensor):
    """While active, the token embedding returns ``row`` wherever ``token_id`` appears.

    The embedding weight is untouched (and receives no gradient); ``row`` carries the gradient.
    """
    emb = text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        ids = inputs[0]
        mask = (ids == token_id).unsqueeze(-1)
        return torch.where(mask, row.to(output.dtype), output)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def update_seeds(base: int, update: int, batch: int) -> list[int]:
    """Seeds of the images of update ``update`` of a class whose seed is ``base``."""
    return [(base + update * batch + j) % (2**63) for j in range(batch)]


@dataclass
class DCTResult:
    name: str
    token: str
    vector: torch.Tensor  # learned embedding row [D]
    init_vector: torch.Tensor  # its initialisation [D]
    init_word: str
    updates: int
    stop_reason: str  # "gamma" | "patience" | "max_updates"
    final_acc: float  # CDM accuracy (0..1) on the images of the returned token's last update
    losses: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    seconds: float = 0.0


class DCTLearner:
    """Learns tokens class after class on one pipeline (one actor = one pipeline = one GPU)."""

    def __init__(self, pipe, cdm, unseen: list[int], settings: TokensConfig, precision: str = "fp32"):
        """``settings``: the ``tokens`` config section (one declaration of every learning setting)."""
        self.pipe, self.cdm, self.s, self.seed, self.precision = pipe, cdm, settings, settings.seed, precision
        self.unseen = torch.tensor(unseen)
        self.device = pipe.device
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, cdm):
            m.requires_grad_(False)
            m.eval()
        if settings.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.unet.train()  # diffusers checkpoints only in training mode; the UNet has no dropout
        with torch.no_grad():
            self.uncond = encode_text(pipe.text_encoder, pipe.tokenizer, [""], self.device)

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        enabled = self.device.type == "cuda" and dtype is not None
        return torch.autocast("cuda", dtype=dtype or torch.float32, enabled=enabled)

    def _columns_and_target(self, class_idx: int) -> tuple[torch.Tensor | None, int]:
        if self.s.restrict_to_unseen:
            pos = (self.unseen == class_idx).nonzero()
            if len(pos) != 1:
                raise TokenError(f"class index {class_idx} is not among the unseen classes")
            return self.unseen.to(self.device), int(pos[0, 0])
        return None, class_idx

    def images(self, prompts: list[str], seeds: list[int], token_id: int | None = None,
               row: torch.Tensor | None = None, grad: bool = False, steps: int | None = None) -> torch.Tensor:
        """Generate images ``[B, 3, H, W]`` (0..1) for prompts, optionally with a row injected."""
        p, s = self.pipe, self.s
        ctx = injected_row(p.text_encoder, token_id, row) if token_id is not None else contextlib.nullcontext()
        with torch.set_grad_enabled(grad), ctx, self._autocast():
            cond = encode_text(p.text_encoder, p.tokenizer, prompts, self.device)
            uncond = self.uncond.expand(len(prompts), -1, -1)
            p.scheduler.set_timesteps(steps or s.num_inference_steps, device=self.device)
            lat = scaled_latents(p.unet, p.scheduler, seeds, self.device, p.unet.dtype)
            lat = denoise(p.unet, p.scheduler, lat, cond, uncond, steps or s.num_inference_steps, s.guidance_scale,
                          s.grad_steps if grad else 0)
            return decode(p.vae, lat)

    def cdm_logits(self, images: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        with self._autocast():
            logits = self.cdm(images).float()
        return logits[:, columns] if columns is not None else logits

    def learn(self, name: str, class_idx: int, token: str, init_word: str, progress=None) -> DCTResult:
        """Learn the token of one class; adds ``token`` to the tokenizer/text encoder of the pipeline."""
        t0 = time.time()
        s = self.s
        token_id, init_vec = add_placeholder(self.pipe.tokenizer, self.pipe.text_encoder, token, init_word)
        row = torch.nn.Parameter(init_vec.clone().float().to(self.device))
        opt = torch.optim.AdamW([row], lr=s.lr, weight_decay=0.0)
        columns, target = self._columns_and_target(class_idx)
        base = class_seed(name, self.seed)
        losses, accs = [], []
        best_loss, best_row, since_best, best_acc = math.inf, row.detach().clone(), 0, 0.0
        stop, kept_acc = "max_updates", 0.0
        for u in range(s.max_updates):
            # 1-3. generate with grad through the last K steps, score with the CDM
            prompts = prompts_for(s.templates, token, name, s.batch_size)
            imgs = self.images(prompts, update_seeds(base, u, s.batch_size), token_id, row, grad=True)
            logits = self.cdm_logits(imgs, columns)
            y = torch.full((len(imgs),), target, device=self.device)
            loss = F.cross_entropy(logits, y)
            acc = float((logits.argmax(1) == y).float().mean())
            losses.append(round(float(loss.detach()), 5))
            accs.append(round(acc, 4))
            if progress:
                progress(u, float(loss.detach()), acc)
            finite = math.isfinite(float(loss.detach()))
            if finite and float(loss.detach()) < best_loss - 1e-6:
                best_loss, best_row, since_best, best_acc = float(loss.detach()), row.detach().clone(), 0, acc
            else:
                since_best += 1
            # early stops keep the token that produced this batch (gamma) or the best one (patience)
            if u >= s.min_updates and acc >= s.gamma:
                stop, kept_acc = "gamma", acc
                best_row = row.detach().clone()
                break
            if u >= s.min_updates and since_best >= s.patience:
                stop, kept_acc = "patience", best_acc
                break
            # 4. update the row only (a non-finite loss, e.g. fp16 overflow, is skipped, not applied)
            if not finite:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            kept_acc = best_acc
        updates = len(losses)
        # the final token is written into the embedding table (its own row only)
        with torch.no_grad():
            w = self.pipe.text_encoder.get_input_embeddings().weight
            w[token_id] = best_row.to(w.dtype)
        return DCTResult(name=name, token=token, vector=best_row.float().cpu(), init_vector=init_vec,
                         init_word=init_word, updates=updates, stop_reason=stop, final_acc=kept_acc,
                         losses=losses, accs=accs, seconds=round(time.time() - t0, 2))

    @torch.no_grad()
    def evaluate(self, prompts: list[str], seeds: list[int], class_idx: int, token_id: int | None = None,
                 row: torch.Tensor | None = None, steps: int | None = None, batch: int = 32) -> tuple[float, torch.Tensor]:
        """(CDM accuracy 0..1, images) of fresh images, one per (prompt, seed)."""
        columns, target = self._columns_and_target(class_idx)
        imgs = torch.cat([self.images(prompts[i : i + batch], seeds[i : i + batch], token_id, row, steps=steps)
                          for i in range(0, len(prompts), batch)])
        pred = self.cdm_logits(imgs, columns).argmax(1)
        return float((pred == target).float().mean()), imgs.cpu()
