"""Multi-label CLIP classifier: DualCoOp-style learned prompt contexts and region-wise scores (plain torch).

Reference: DualCoOp ``models/dualcoop.py`` as Diff-ZS-MLC uses it (reference/multilabel-and-zerodiff.md
section A5): a positive and a negative context of ``n_ctx`` learned token embeddings, shared across
classes (no class-specific contexts), each prepended to every class name and encoded by the frozen
CLIP text tower. The image side is the frozen visual tower (with the feature-fusion branches of
:mod:`.fusion`, the only visual parameters that train). Region-wise logits
``logit_scale * cos(region feature, text feature)`` are aggregated over regions with a softmax taken
from the positive logits, times ``agg_scale``; the class probability is the positive entry of a
softmax over (negative, positive). Reference scales: 20 and 5.

Regions: a ResNet tower's last feature map; a ViT tower's patch tokens (after ``ln_post`` and the
projection; our reading for ViT, where DualCoOp used ResNets only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptContexts(nn.Module):
    """Learned positive/negative contexts and the text features they give every class name."""

    def __init__(self, clip, tokenizer, class_names: list[str], n_ctx: int = 16, init_std: float = 0.02):
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        prompts = [" ".join(["X"] * n_ctx) + " " + name + "." for name in class_names]
        ids = tokenizer(prompts)
        length = ids.shape[1]
        if (ids[:, -1] != 0).any():  # no padding left: the tokenizer truncated (or exactly filled) the prompt
            bad = [n for n, last in zip(class_names, ids[:, -1].tolist()) if last != 0]
            raise ValueError(f"{len(bad)} prompt(s) do not fit the text tower's {length} tokens with n_ctx={n_ctx} "
                             f"(first: {bad[0]!r}); lower n_ctx")
        with torch.no_grad():
            emb = clip.token_embedding(ids)
        width = emb.shape[-1]
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # SOT
        self.register_buffer("suffix", emb[:, 1 + n_ctx:].clone(), persistent=False)  # name, '.', EOT, padding
        self.ctx_pos = nn.Parameter(torch.randn(n_ctx, width) * init_std)
        self.ctx_neg = nn.Parameter(torch.randn(n_ctx, width) * init_std)
        self.n_ctx = n_ctx

    def encode(self, clip, ctx: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``[C, E]`` of every class with context ``ctx``."""
        c = self.prefix.shape[0]
        x = torch.cat([self.prefix, ctx.unsqueeze(0).expand(c, -1, -1), self.suffix], 1)
        x = x + clip.positional_embedding.to(x.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = x[torch.arange(c), self.ids.argmax(-1)]  # the EOT position
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)

    def forward(self, clip) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(clip, self.ctx_pos), self.encode(clip, self.ctx_neg)


def vit_regions(visual, images: torch.Tensor) -> torch.Tensor:
    """Normalised projected patch tokens ``[B, N, E]`` of an open_clip ViT tower."""
    was = visual.output_tokens
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = was
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(tokens, dim=-1)


def region_scores(regions: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor,
                  logit_scale: float = 20.0, agg_scale: float = 5.0) -> torch.Tensor:
    """``regions [B, N, E]``, text ``[C, E]`` -> logits ``[B, 2, C]`` (index 0 negative, 1 positive)."""
    lp = logit_scale * regions @ text_pos.t()  # [B, N, C]
    ln = logit_scale * regions @ text_neg.t()
    w = lp.softmax(1)  # over regions, from the positive half
    return agg_scale * torch.stack([(w * ln).sum(1), (w * lp).sum(1)], 1)


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 2, C]`` -> ``[B, C]``: the positive entry of a softmax over (negative, positive)."""
    return logits.softmax(1)[:, 1]
