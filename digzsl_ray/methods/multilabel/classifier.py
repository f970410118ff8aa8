"""Multi-label CLIP classifier: DualCoOp-style learned prompt contexts and region-wise scores (plain torch).

Reference: DualCoOp ``models/dualcoop.py`` as Diff-ZS-MLC uses it (reference/multilabel-and-zerodiff.md
section A5): a positive and a negative context of ``n_ctx`` learned token embeddings, shared across
classes (no class-specific contexts), each prepended to every class name and encoded by the frozen
CLIP text tower. The image side is the frozen visual tower (with the feature-fusion branches of
:mod:`.fusion`, the only visual parameters that train). Region-wise logits
``logit_scale * cos(region feature, text feature)`` are aggregated over regions with a softmax taken
from the positive logits, times ``agg_scale``; the class probability is the positive entry of a
softmax over (negative, positive). Reference scales: 20 and 5.

Regions: a ResNet tower's last feature map; a ViT tower's class token and patch tokens (after
``ln_post`` and the projection; our reading for ViT, where DualCoOp used ResNets only; see
:func:`vit_regions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptContexts(nn.Module):
    """Learned positive/negative contexts and the text features they give every class name."""

    def __init__(self, clip, tokenizer, class_names: list[str], n_ctx: int = 16, init_std: float = 0.02,
                 ctx_init: str = ""):
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
        if ctx_init:  # CoOp's initialisation: the positive context ends with the words of a prompt
            init_ids = tokenizer([ctx_init])
            k = int(init_ids[0].argmax()) - 1  # tokens between SOT and EOT
            if not 1 <= k <= n_ctx:
                raise ValueError(f"ctx_init {ctx_init!r} is {k} tokens; it must be 1 to n_ctx={n_ctx}")
            with torch.no_grad():
                self.ctx_pos[n_ctx - k:] = clip.token_embedding(init_ids)[0, 1:1 + k]

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


def vit_regions(visual, images: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
    """Normalised regions ``[B, 1 + N, E]`` of an open_clip ViT tower: the pooled class token (the
    image's CLIP embedding) followed by the N projected patch tokens.

    DualCoOp's ResNet regions are the attention pool's value projections at every position; a ViT's
    patch tokens after ``ln_post`` and the projection are only weakly aligned with the text tower
    (CLIP trains the class token alone against text), so the class token is one more region: the
    softmax aggregation weighs it like any other. Zero-shot on MiniWorld's 600 trainval scenes at
    64 px (prototypes as text, mAP over the seen labels): patch tokens alone 17.9, with the class
    token 31.3, the class token alone 33.8.
    """
    was = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = was
    if class_token_only:
        return F.normalize(pooled.unsqueeze(1), dim=-1)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(torch.cat([pooled.unsqueeze(1), tokens], 1), dim=-1)


def region_scores(regions: torch.Tensor, text_pos: torch.Tensor, text_neg: torch.Tensor,
                  logit_scale: float = 20.0, agg_scale: float = 5.0) -> torch.Tensor:
    """``regions [B, N, E]``, text ``[C, E]`` -> logits ``[B, 2, C]`` (index 0 negative, 1 positive).

    ``text_neg`` is the negative prompt's text features ``[C, E]`` (DualCoOp), or learned cosine
    thresholds, ``[C]`` or one for every label (0-d), so that a label's score ranks images exactly as
    its positive text feature does."""
    lp = logit_scale * regions @ text_pos.t()  # [B, N, C]
    w = lp.softmax(1)  # over regions, from the positive half
    pos = (w * lp).sum(1)
    if text_neg.dim() < 2:  # thresholds: one per label [C] or one for all (0-d)
        neg = (logit_scale * text_neg).expand_as(pos)
    else:
        neg = (w * (logit_scale * regions @ text_neg.t())).sum(1)
    return agg_scale * torch.stack([neg, pos], 1)


def positive_margin(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 2, C]`` -> ``[B, C]``: positive minus negative logit, the log-odds of
    :func:`positive_probability`. Rankings use it: the probability saturates to exactly 0 or 1 in
    floating point once the margin passes about 17 (float32), which turns different scores into ties."""
    return logits[:, 1] - logits[:, 0]


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 2, C]`` -> ``[B, C]``: the positive entry of a softmax over (negative, positive)."""
    return logits.softmax(1)[:, 1]


class MultiLabelCLIP(nn.Module):
    """The classifier: frozen CLIP (image tower at ``image_size``, with the fusion branches when
    ``branch``) and one of two text sides (``head``):

    - ``"contexts"``: DualCoOp's learned positive/negative prompt contexts (:class:`PromptContexts`),
      shared by all labels; ``negative="bias"`` replaces the negative prompt by one learned cosine
      threshold;
    - ``"prototypes"``: one weight vector per label started at the label's prototype (the run's
      prompt-ensemble text embedding, ``prototypes [C, E]``), and one learned cosine threshold per
      label (``bias_init``). It is the classifier tuning of He et al. (ICLR 2023) for multi-label
      scores: with ``regions="class_token"`` and no branch its first scores rank images exactly as
      the frozen CLIP with the prototypes does (the ``clip_zero_shot`` floor); an unseen label's row
      moves only with images of it (the synthetic ones).

    Only the text side and the branches train."""

    def __init__(self, clip, tokenizer, class_names: list[str], n_ctx: int = 16, image_size: int = 0,
                 branch: bool = True, logit_scale: float = 20.0, agg_scale: float = 5.0, ctx_init: str = "",
                 regions: str = "all", negative: str = "prompt", bias_init: float = 0.3, head: str = "contexts",
                 prototypes: torch.Tensor | None = None):
        super().__init__()
        from digzsl_ray.methods.multilabel.fusion import convert_vit
        from digzsl_ray.models.vit import set_vit_resolution

        for name, value, allowed in (("regions", regions, ("all", "class_token")),
                                     ("negative", negative, ("prompt", "bias")),
                                     ("head", head, ("contexts", "prototypes"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        clip.requires_grad_(False)
        set_vit_resolution(clip.visual, image_size)
        self.clip = clip
        self.branches = convert_vit(clip.visual.transformer) if branch else 0
        if branch and not self.branches:
            raise ValueError("the feature-fusion branch needs a ViT image tower with self-attention blocks")
        self.logit_scale, self.agg_scale = logit_scale, agg_scale
        self.regions, self.negative, self.head = regions, negative, head
        if head == "prototypes":
            width = clip.text_projection.shape[-1] if not isinstance(clip.text_projection, nn.Linear) \
                else clip.text_projection.out_features
            w = torch.zeros(len(class_names), width) if prototypes is None else F.normalize(prototypes.float(), dim=-1)
            if w.shape != (len(class_names), width):
                raise ValueError(f"prototypes {tuple(w.shape)} do not match {len(class_names)} labels x {width}")
            self.weight = nn.Parameter(w.clone())
            self.head_bias = nn.Parameter(torch.full((len(class_names),), float(bias_init)))
        else:
            self.contexts = PromptContexts(clip, tokenizer, class_names, n_ctx, ctx_init=ctx_init)
            if negative == "bias":
                self.neg_bias = nn.Parameter(torch.tensor(float(bias_init)))

    def trainable(self) -> list[nn.Parameter]:
        from digzsl_ray.methods.multilabel.fusion import branch_parameters

        return self.context_parameters() + branch_parameters(self.clip)

    def context_parameters(self) -> list[nn.Parameter]:
        """What the text side's optimiser trains: the label weights and thresholds, or the positive
        context with the negative prompt or threshold."""
        if self.head == "prototypes":
            return [self.weight, self.head_bias]
        neg = self.neg_bias if self.negative == "bias" else self.contexts.ctx_neg
        return [self.contexts.ctx_pos, neg]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p.detach().cpu().contiguous() for p in self.trainable()}

    def text_features(self, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised positive text features ``[C', E]`` (all classes, or ``classes``) and the negative
        side: text features ``[C', E]``, thresholds ``[C']`` or one threshold (a 0-d tensor)."""
        if self.head == "prototypes":
            w, b = (self.weight, self.head_bias) if classes is None else (self.weight[classes], self.head_bias[classes])
            return F.normalize(w, dim=-1), b
        ctx = self.contexts
        enc = ctx if classes is None else _SubsetContexts(ctx, classes)
        pos = enc.encode(self.clip, ctx.ctx_pos)
        return pos, (self.neg_bias if self.negative == "bias" else enc.encode(self.clip, ctx.ctx_neg))

    def forward(self, images: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> logits ``[B, 2, C']``."""
        pos, neg = text if text is not None else self.text_features()
        regions = vit_regions(self.clip.visual, images, self.regions == "class_token")
        return region_scores(regions, pos, neg, self.logit_scale, self.agg_scale)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # the frozen backbone stays in eval mode (the reference's model.eval())
        return self


class _SubsetContexts:
    """The buffers of :class:`PromptContexts` restricted to some classes (class subsampling)."""

    def __init__(self, ctx: PromptContexts, classes: torch.Tensor):
        self.prefix, self.suffix, self.ids = ctx.prefix[classes], ctx.suffix[classes], ctx.ids[classes]

    encode = PromptContexts.encode


class ServedMultiLabel(nn.Module):
    """A trained classifier directory as one module: uint8 images ``[B, 3, S, S]`` -> probabilities
    ``[B, C]`` (each label's positive probability; text features computed once)."""

    def __init__(self, net: MultiLabelCLIP, mean, std):
        super().__init__()
        self.net = net.eval()
        with torch.no_grad():
            pos, neg = net.text_features()
        self.register_buffer("pos", pos)
        self.register_buffer("neg", neg)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return positive_probability(self.net((x - self.mean) / self.std, (self.pos, self.neg)))


def load_multilabel(path, device="cpu") -> tuple[ServedMultiLabel, dict]:
    """``(model, config)`` of a classifier directory (``weights.safetensors`` + ``config.json``;
    CLIP is reloaded from the reference the config names; nothing is unpickled)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from digzsl_ray.models.presets import load_clip

    cfg = json.loads((Path(path) / "config.json").read_text())
    clip, _, tokenizer = load_clip(cfg["clip"], cfg.get("clip_pretrained", ""), device=device)
    net = MultiLabelCLIP(clip, tokenizer, cfg["class_names"], cfg["n_ctx"], cfg["image_size"], cfg["branch"],
                         cfg["logit_scale"], cfg["agg_scale"], regions=cfg.get("regions", "all"),
                         negative=cfg.get("negative", "prompt"), head=cfg.get("head", "contexts"))
    state = load_file(str(Path(path) / "weights.safetensors"))
    missing = set(state) - {n for n, _ in net.named_parameters()}
    if missing:
        raise ValueError(f"{path}/weights.safetensors: unexpected tensors {sorted(missing)[:3]}")
    net.load_state_dict(state, strict=False)
    return ServedMultiLabel(net.to(device), cfg["mean"], cfg["std"]).to(device), cfg


def served_model(path, device="cpu") -> ServedMultiLabel:
    """The serving hook of the method (:attr:`digzsl_ray.stages.contract.Method.serve_loader`)."""
    return load_multilabel(path, device)[0]
