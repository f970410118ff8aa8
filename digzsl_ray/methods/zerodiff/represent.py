"""The supervised-contrastive (SC) representation r, and MinMax scaling.

The reference takes r from a ResNet-101 trained with PaCo (parametric supervised contrastive
learning) on the seen trainval images. Ours (documented substitute, docs/zerodiff.md): an MLP
encoder on the backbone features trained with the SupCon loss (Khosla et al. 2020) on the seen
training features of a fold, r = the encoder's output (non-negative, like pooled CNN features),
a projection head used only by the loss. Each fold trains its own (the validation fold never sees
its pseudo-unseen classes' labels).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RepresentationNet(nn.Module):
    def __init__(self, in_dim: int, hidden: int, r_dim: int, proj_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, r_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(r_dim, r_dim), nn.ReLU(), nn.Linear(r_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.encoder(x)), dim=1)


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (L_out): for each anchor with at least one positive, minus the mean log-probability
    of its positives under a softmax over all other samples. ``z`` L2-normalised [B, D]."""
    b = len(z)
    logits = z @ z.T / temperature
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y.unsqueeze(0) == y.unsqueeze(1)) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any():
        return z.sum() * 0.0
    mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[has] / n_pos[has]
    return -mean_pos.mean()


def train_representation(x: torch.Tensor, y: torch.Tensor, c, seed: int, progress: bool = False):
    """A :class:`RepresentationNet` trained with SupCon on (x, y); returns (net, loss per epoch)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = RepresentationNet(x.shape[1], c.hidden, c.r_dim, c.proj_dim)
    opt = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    history = []
    for _ in tqdm(range(c.epochs), desc="SC representation", disable=not progress, leave=False):
        perm = torch.randperm(len(x), generator=gen)
        total, k = 0.0, 0
        for i in range(0, len(x) - 1, c.batch_size):
            idx = perm[i:i + c.batch_size]
            if len(idx) < 2:
                continue
            loss = supcon_loss(net.project(x[idx]), y[idx], c.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, k = total + float(loss.detach()), k + 1
        history.append(round(total / max(k, 1), 5))
    net.eval()
    return net, history


class MinMax:
    """The reference's ``preprocessing_fun``: MinMax per dimension fit on the training rows, then
    divided by the training maximum; the same map is applied to every split (test values may leave [0, 1])."""

    def __init__(self, train: np.ndarray):
        self.lo = train.min(0)
        span = train.max(0) - self.lo
        self.span = np.where(span > 0, span, 1.0)
        self.top = float(((train - self.lo) / self.span).max()) or 1.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.lo) / self.span / self.top).astype(np.float32)

    def state(self) -> dict:
        return {"lo": self.lo.tolist(), "span": self.span.tolist(), "top": self.top}
