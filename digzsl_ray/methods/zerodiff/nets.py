"""ZeroDiff's networks (FouriYe/ZeroDiff_ICLR25 ``zerodiff_DRG_train.py``, ``zerodiff_DFG_train.py``):
every one a two-layer MLP, as in the reference.

* :class:`DRGGenerator` (representation generator): [z ; a ; r_t ; emb(t)] -> r_hat0 (sigmoid).
* :class:`DFGGenerator` (feature generator): [z ; a ; emb(r) ; x_{t+1} ; emb(t)] -> x_hat0 (sigmoid).
* :class:`Encoder`: [x ; a] -> (mu, logvar) of the VAE latent (the DFG's VAE term).
* :class:`Critic`: the WGAN critics of every view; which inputs a view concatenates is the caller's.
* :class:`V2S`: visual -> semantic decoder (2048 -> ngh -> att) trained with the weighted L1.

Widths (ngh, ndh) are config values: 4096 in the reference, smaller on MiniWorld's 64-d features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of integer steps (DDPM / DDGAN convention: cos then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class EmbedFC(nn.Module):
    """Linear -> LeakyReLU -> Linear (the reference's ``TimeEmbedFC``, also used for emb(r))."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LeakyReLU(0.2), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TimeEmbed(nn.Module):
    def __init__(self, dim_t: int, out_dim: int):
        super().__init__()
        self.dim_t = dim_t
        self.fc = EmbedFC(dim_t, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc(timestep_embedding(t, self.dim_t))


def _mlp(in_dim: int, hidden: int, out_dim: int, sigmoid: bool) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


def init_weights(m: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases (the reference's ``weights_init``)."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


class DRGGenerator(nn.Module):
    def __init__(self, att_dim: int, r_dim: int, noise_dim: int, hidden: int, dim_t: int):
        super().__init__()
        self.noise_dim = noise_dim
        self.temb = TimeEmbed(dim_t, att_dim)
        self.net = _mlp(noise_dim + att_dim + r_dim + att_dim, hidden, r_dim, sigmoid=True)
        self.apply(init_weights)

    def forward(self, z, a, r_t, t):
        return self.net(torch.cat([z, a, r_t, self.temb(t)], 1))


class DFGGenerator(nn.Module):
    def __init__(self, att_dim: int, x_dim: int, r_dim: int, noise_dim: int, hidden: int, dim_t: int):
        super().__init__()
        self.noise_dim = noise_dim
        self.temb = TimeEmbed(dim_t, att_dim)
        self.remb = EmbedFC(r_dim, att_dim)
        self.net = _mlp(noise_dim + att_dim + att_dim + x_dim + att_dim, hidden, x_dim, sigmoid=True)
        self.apply(init_weights)

    def forward(self, z, a, r, x_tp1, t):
        return self.net(torch.cat([z, a, self.remb(r), x_tp1, self.temb(t)], 1))


class Encoder(nn.Module):
    def __init__(self, x_dim: int, att_dim: int, noise_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim + att_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * noise_dim))
        self.apply(init_weights)

    def forward(self, x, a):
        mu, logvar = self.net(torch.cat([x, a], 1)).chunk(2, dim=1)
        return mu, logvar


class Critic(nn.Module):
    """[inputs...] -> one score. ``emb``: (position, in_dim) of an input passed through its own
    :class:`EmbedFC` first (emb(r) of the diffusion and representation views; emb(t) for steps)."""

    def __init__(self, in_dims: list[int], hidden: int, r_index: int | None = None, r_dim: int = 0,
                 att_dim: int = 0, t_index: int | None = None, dim_t: int = 0):
        super().__init__()
        self.r_index, self.t_index = r_index, t_index
        self.remb = EmbedFC(r_dim, att_dim) if r_index is not None else None
        self.temb = TimeEmbed(dim_t, att_dim) if t_index is not None else None
        self.net = _mlp(sum(in_dims), hidden, 1, sigmoid=False)
        self.apply(init_weights)

    def forward(self, *inputs) -> torch.Tensor:
        parts = list(inputs)
        if self.remb is not None:
            parts[self.r_index] = self.remb(parts[self.r_index])
        if self.temb is not None:
            parts[self.t_index] = self.temb(parts[self.t_index])
        return self.net(torch.cat(parts, 1)).squeeze(1)


class V2S(nn.Module):
    """Visual -> semantic regressor; ``forward`` returns (semantics, hidden activation). With
    ``normalise`` the semantics are L2-normalised, as the reference does when its class semantics are
    (``--class_embedding_norm``; zerodiff_tools.py)."""

    def __init__(self, x_dim: int, att_dim: int, hidden: int, normalise: bool = False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(x_dim, hidden), nn.Linear(hidden, att_dim)
        self.act = nn.LeakyReLU(0.2)
        self.normalise = normalise
        self.apply(init_weights)

    def forward(self, x):
        h = self.act(self.fc1(x))
        out = self.fc2(h)
        return (nn.functional.normalize(out, dim=1) if self.normalise else out), h


def weighted_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """tfvaegan's and the reference's ``WeightedL1``: per sample, L1 weighted by the squared error over
    the square root of its sum, ``w = e^2 / sqrt(sum e^2)``; summed and divided by the batch size."""
    err = pred - target
    w = err.pow(2)  # not detached, as in tfvaegan
    w = w / w.sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return (w * err.abs()).sum() / pred.shape[0]
