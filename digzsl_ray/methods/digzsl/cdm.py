"""The category discrimination model (CDM): frozen CLIP image encoder + trainable projection.

``logits_c = cos(P(E_img(x)), p_c) / tau`` for prototypes ``p_c`` (DIG-ZSL's CDM). The projection
``P`` is residual with a zero-initialised last layer, so an untrained CDM *is* CLIP zero-shot and
training on seen classes only refines it. The same module scores generated images during DCT
learning, so gradients flow from the logits through the frozen encoder into the pixels.

Saved as ``OUT/cdm/config.json`` + ``OUT/cdm/head.safetensors`` (projection and prototypes);
``load_cdm(dir)`` restores it with the CLIP it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digzsl_ray.features import extract_features  # noqa: F401 (re-exported)
from digzsl_ray.images import normalise, resize_for
from digzsl_ray.io import atomic_path, write_json

HEAD_FILE, CONFIG_FILE = "head.safetensors", "config.json"


class Projection(nn.Module):
    """``f -> skip(f) + MLP(f)``; identity (or a linear map) at initialisation."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.skip = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)) if hidden else None
        if self.mlp is not None:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out = self.skip(f)
        return out + self.mlp(f) if self.mlp is not None else out


class CDMHead(nn.Module):
    """Projection + fixed prototypes: features ``[B, D_img]`` -> logits ``[B, C]``."""

    def __init__(self, prototypes: torch.Tensor, in_dim: int, hidden: int, temperature: float):
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))
        self.proj = Projection(in_dim, prototypes.shape[1], hidden)
        self.temperature = temperature

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.proj(feats.float()), dim=-1)
        return z @ self.prototypes.t() / self.temperature


class CDM(nn.Module):
    """Images in 0..1 ``[B, 3, H, W]`` -> logits ``[B, C]`` over *all* classes (seen and unseen)."""

    def __init__(self, clip_model, head: CDMHead, image_size: int, mean, std):
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.head = head
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        x = normalise(resize_for(x01.float(), self.image_size), self.mean, self.std)
        return self.clip.encode_image(x).float()

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x01))


# Features: digzsl_ray.features.extract_features (shared with the classifier and the zero-shot floor)


def train_epoch(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor,
                opt: torch.optim.Optimizer, batch: int, gen: torch.Generator, device: torch.device) -> float:
    """One epoch of cross-entropy over ``columns`` (the seen classes). ``feats [V, N, D]``; a random view per sample.

    ``labels`` are positions in ``columns``.
    """
    head.train()
    n = feats.shape[1]
    perm = torch.randperm(n, generator=gen)
    view = torch.randint(0, feats.shape[0], (n,), generator=gen)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        idx = perm[i : i + batch]
        f = feats[view[idx], idx].to(device)
        logits = head(f)[:, columns.to(device)]
        loss = F.cross_entropy(logits, labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def head_scores(head: nn.Module, feats: torch.Tensor, device: torch.device, batch: int = 4096) -> torch.Tensor:
    """Logits ``[N, C]`` of features ``[N, D]``."""
    head.eval()
    if not len(feats):  # [0, C]: concatenates and softmaxes like any other score array
        return torch.empty(0, head.prototypes.shape[0]) if hasattr(head, "prototypes") else torch.empty(0)
    return torch.cat([head(feats[i : i + batch].to(device)).cpu() for i in range(0, len(feats), batch)])


# Saving and loading ------------------------------------------------------------------------------
def save_cdm(out_dir: str | Path, head: CDMHead, meta: dict) -> None:
    """``meta`` must hold: clip, clip_pretrained, hidden_dim, temperature, image_size, mean, std, class_names."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(out_dir / HEAD_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(out_dir / CONFIG_FILE, {**meta, "in_dim": _in_dim(head), "proto_dim": head.prototypes.shape[1]})


def _in_dim(head: CDMHead) -> int:
    if isinstance(head.proj.skip, nn.Linear):
        return head.proj.skip.in_features
    return head.prototypes.shape[1]


def load_cdm(path: str | Path, device: str | torch.device = "cpu") -> CDM:
    """A ready CDM (eval mode) from ``OUT/cdm``: loads the CLIP named in its config.json."""
    from safetensors.torch import load_file

    from digzsl_ray.models.presets import load_clip

    path = Path(path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    state = load_file(str(path / HEAD_FILE))
    head = CDMHead(state["prototypes"], meta["in_dim"], meta["hidden_dim"], meta["temperature"])
    head.load_state_dict(state)
    clip_model, _, _ = load_clip(meta["clip"], meta.get("clip_pretrained", ""), device=device)
    cdm = CDM(clip_model, head, meta["image_size"], meta["mean"], meta["std"]).to(device).eval()
    cdm.meta = meta
    return cdm
