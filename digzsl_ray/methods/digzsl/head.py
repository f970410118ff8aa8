"""DIG-ZSL's classifier head trained on cached frozen-CLIP features (plain torch; no ray).

With ``classifier.backbone: clip`` the tower is frozen, so the classifier is its head on features
that never change: :func:`train_head` runs the epochs on ``[V, N, D]`` tensors of a fixed number of
views (:mod:`digzsl_ray.features`) instead of re-encoding every image every epoch.

The recipe follows He et al. (ICLR 2023, "Is synthetic data from generative models ready for image
recognition?", zero-shot setting) where the config asks for it:

* ``head: prototypes`` starts the head *as* CLIP zero-shot over all classes;
* ``distill`` mixes the hard cross-entropy with a soft cross-entropy toward the frozen CLIP's
  zero-shot probabilities (temperature ``distill_temperature``): ``(1 - a) CE(y) + a T^2 KL(t || s)``;
* ``init_candidate``: the untrained head (epoch "-1" = CLIP zero-shot for the prototype head) is a
  model-selection candidate like every epoch, so training must beat it on validation data to be kept;
* ``clip_filter`` (applied by the stage, :func:`digzsl_ray.features.clip_filter`) keeps synthetic
  images the frozen CLIP judges more likely than chance to show their class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from digzsl_ray.metrics.zsl import mean_per_class_accuracy


def balanced_rows(labels: torch.Tensor, factors: dict[int, float], gen: torch.Generator) -> torch.Tensor:
    """Row indices of one epoch: row ``i`` ``floor(r)`` times for sure and once more with probability
    ``frac(r)``, ``r = factors[label_i]`` (every class contributes about the same number of rows)."""
    r = torch.tensor([factors.get(int(y), 1.0) for y in labels.tolist()], dtype=torch.float64)
    whole = r.floor().long()
    extra = torch.rand(len(r), generator=gen, dtype=torch.float64) < (r - whole)
    reps = whole + extra.long()
    return torch.repeat_interleave(torch.arange(len(r)), reps)


def class_factors(labels: torch.Tensor | np.ndarray) -> dict[int, float]:
    """``target / count`` per class with target the mean class count."""
    ys, counts = np.unique(np.asarray(labels), return_counts=True)
    if not len(ys):
        return {}
    target = float(counts.mean())
    return {int(y): target / float(n) for y, n in zip(ys, counts)}


def head_logits(head: nn.Module, feats: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Logits ``[N, C]`` (on the CPU) of L2-normalised features ``[N, D]`` (the CLIP backbone's input to
    its head), computed on the head's device."""
    dev = next(head.parameters()).device
    out = [head(F.normalize(feats[i : i + batch].to(dev).float(), dim=-1)).cpu() for i in range(0, len(feats), batch)]
    return torch.cat(out) if out else torch.empty(0)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def train_epoch(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, factors: dict[int, float],
                opt: torch.optim.Optimizer, batch: int, gen: torch.Generator, teacher: torch.Tensor | None = None,
                distill: float = 0.0, temperature: float = 2.0, device: torch.device | str = "cpu",
                rows: int | None = None) -> tuple[float, int]:
    """One class-balanced epoch over features ``[V, N, D]`` (a random view per row).

    ``teacher [V, N, C]``: the frozen CLIP's zero-shot logits of the same views (needed when ``distill`` > 0).
    ``rows``: exactly this many rows (cut or wrapped; data-parallel workers must step equally often).
    Returns ``(mean loss, rows seen)``.
    """
    head.train()
    picked = balanced_rows(labels, factors, gen)
    picked = picked[torch.randperm(len(picked), generator=gen)]
    if rows is not None and len(picked):
        picked = picked[torch.arange(rows) % len(picked)]
    rows = picked
    view = torch.randint(0, feats.shape[0], (len(rows),), generator=gen)
    total = 0.0
    for i in range(0, len(rows), batch):
        idx, v = rows[i : i + batch], view[i : i + batch]
        f = F.normalize(feats[v, idx].to(device).float(), dim=-1)
        logits = head(f)
        loss = F.cross_entropy(logits, labels[idx].to(device))
        if distill > 0 and teacher is not None:
            loss = (1 - distill) * loss + distill * distill_loss(logits, teacher[v, idx].to(device), temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / max(len(rows), 1), int(len(rows))


@torch.no_grad()
def validate(head: nn.Module, feats: torch.Tensor, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean per-class accuracy (percent, argmax over all classes) on validation features ``[N, D]`` and
    the softmax scores ``[N, C]``."""
    head.eval()
    if not len(labels):
        return 0.0, np.zeros((0, 0), dtype=np.float32)
    p = head_logits(head, feats).softmax(-1).cpu().numpy()
    return mean_per_class_accuracy(labels, p.argmax(1), sorted(set(np.asarray(labels).tolist()))), p


def train_head(head: nn.Module, train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
               val_labels: np.ndarray, *, epochs: int, patience: int, lr: float, weight_decay: float, batch: int,
               seed: int, teacher: torch.Tensor | None = None, distill: float = 0.0, temperature: float = 2.0,
               init_candidate: bool = False, device: torch.device | str = "cpu") -> dict:
    """Train ``head`` in place and load its best state (by validation accuracy). Returns
    ``{"best_val_acc", "best_epoch" (-1 = the initial head), "history"}`` (a single-process loop: the
    Ray Train worker runs the same steps with checkpoints between epochs)."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    factors = class_factors(train_labels)
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch, since, history = -1.0, None, 0, []
    best_state = None
    if init_candidate:
        best, _ = validate(head, val_feats, val_labels)
        best_epoch, best_state = -1, {k: v.detach().clone() for k, v in head.state_dict().items()}
        history.append({"epoch": -1, "val_acc": round(best, 3)})
    for epoch in range(epochs):
        loss, n = train_epoch(head, train_feats, train_labels, factors, opt, batch, gen, teacher, distill,
                              temperature, device)
        acc, _ = validate(head, val_feats, val_labels)
        history.append({"epoch": epoch, "loss": round(loss, 5), "val_acc": round(acc, 3), "rows": n})
        if acc > best:
            best, best_epoch, since = acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    return {"best_val_acc": best, "best_epoch": best_epoch, "history": history}
