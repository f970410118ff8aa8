"""ZeroDiff's final classifier (``classifiers/classifier_images.py``): one linear layer with
log-softmax and NLL loss, Adam (lr ``classifier.lr``, betas (0.5, 0.999)), trained on real seen +
synthetic unseen features. Every epoch's probabilities on the given evaluation sets are returned,
so the epoch (and lambda) can be chosen afterwards on validation data only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, evals: dict[str, np.ndarray], c,
                seed: int, columns: list[int] | None = None) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
    """Per epoch: {name: softmax probabilities [N, n_classes]} of every array in ``evals``; and per
    epoch the layer's weights (``weight``, ``bias``). ``columns``: the classes of the fold; the others
    get logit -inf in training and probability -inf in the output (never predicted, whatever the
    calibration subtracts from the seen columns)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    model = nn.Linear(x.shape[1], n_classes)
    off = torch.zeros(n_classes)
    if columns is not None:
        off[:] = float("-inf")
        off[torch.as_tensor(columns)] = 0.0

    def logits(v):
        return model(v) + off

    opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=(0.5, 0.999))
    ev = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in evals.items()}
    out, states = [], []
    for _ in range(c.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), c.batch_size):
            idx = perm[i:i + c.batch_size]
            loss = nn.functional.nll_loss(torch.log_softmax(logits(xt[idx]), 1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out.append({k: torch.where(torch.isinf(off), off, torch.softmax(logits(v), 1)).numpy() if len(v)
                        else np.zeros((0, n_classes), np.float32) for k, v in ev.items()})
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return out, states
