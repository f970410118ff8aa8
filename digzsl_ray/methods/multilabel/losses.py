"""Asymmetric loss (Ridnik et al. 2021) as Diff-ZS-MLC applies it (plain torch).

The reference (``src/loss_function/losses.py``) feeds *probabilities* (the grouping softmax, its
sigmoid commented out), with ``gamma_neg=4, gamma_pos=0, clip=0.05`` for text-encoder tuning and
``gamma_neg=2, gamma_pos=1`` for the classifier. Negative probabilities are shifted by ``clip``
(``p_m = max(p - clip, 0)``); the loss is ``-sum(y log(p) (1-p)^gp + (1-y) log(1-p_m) p_m^gn)``, the
focusing weights ``(1-p)^gp`` and ``p_m^gn`` computed without gradient, as both reference losses do
(``disable_torch_grad_focal_loss=True``): the gradient flows through the log terms only.
"""

from __future__ import annotations

import torch


def asymmetric_loss(prob: torch.Tensor, y: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Sum over the batch and labels of the ASL on probabilities ``prob`` with 0/1 targets ``y``."""
    if prob.shape != y.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and targets {tuple(y.shape)} differ in shape")
    y = y.to(prob.dtype)
    p_neg = (prob - clip).clamp(min=0) if clip > 0 else prob
    with torch.no_grad():
        w_pos, w_neg = (1 - prob).pow(gamma_pos), p_neg.pow(gamma_neg)
    pos = y * torch.log(prob.clamp(min=eps)) * w_pos
    neg = (1 - y) * torch.log((1 - p_neg).clamp(min=eps)) * w_neg
    return -(pos + neg).sum()
