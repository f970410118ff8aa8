"""The served ZeroDiff classifier: uint8 images -> CLIP features -> the run's MinMax scaling ->
the softmax classifier's logits (``OUT/classifier_zd/full``). Only runs whose features come from
the CLIP tower can be served from images (a res101.mat run has no image model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from digzsl_ray.errors import UserError


class ServedZeroDiff(nn.Module):
    def __init__(self, clip_model, size: int, mean, std, tensors: dict, rep: nn.Module | None):
        super().__init__()
        self.clip, self.size, self.mean, self.std = clip_model.eval(), size, mean, std
        self.head = nn.Linear(tensors["head.weight"].shape[1], tensors["head.weight"].shape[0])
        self.head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
        for k in ("x_lo", "x_span", "x_top", "r_lo", "r_span", "r_top"):
            if k in tensors:
                self.register_buffer(k, tensors[k])
        self.rep = rep

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from digzsl_ray.images import normalise, resize_for

        x01 = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        f = nn.functional.normalize(self.clip.encode_image(normalise(resize_for(x01, self.size), self.mean, self.std))
                                    .float(), dim=-1)
        z = (f - self.x_lo) / self.x_span / self.x_top
        if self.rep is not None:
            r = (self.rep(f) - self.r_lo) / self.r_span / self.r_top
            z = torch.cat([z, r], 1)
        return self.head(z)


def load_served(classifier_dir, device="cpu") -> ServedZeroDiff:
    from safetensors.torch import load_file

    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip

    d = Path(classifier_dir)
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("source") != "extract" or cfg.get("backbone") != "clip":
        raise UserError(f"{d}: a ZeroDiff run on {cfg.get('source')}/{cfg.get('backbone')} features cannot classify "
                        "images (serving needs features.backbone: clip)")
    tensors = load_file(str(d / "weights.safetensors"))
    rep = None
    if cfg["input"] == "xr":
        from digzsl_ray.methods.zerodiff.represent import RepresentationNet

        c = cfg["represent"]
        rep = RepresentationNet(tensors["x_lo"].numel(), c["hidden"], c["r_dim"], c["proj_dim"])
        rep.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("rep.")})
        rep.eval()
    clip_model, _, _ = load_clip(cfg["clip"], cfg.get("clip_pretrained", ""), device=device)
    size, (mean, std) = clip_image_size(clip_model), clip_norm(clip_model)
    return ServedZeroDiff(clip_model, size, mean, std, tensors, rep).to(device).eval()
