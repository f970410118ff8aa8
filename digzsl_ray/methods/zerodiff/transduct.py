"""ZeroDiff++'s test-time parts, in OUR reading (the paper's equations are not public; see
docs/zerodiff.md). Both are transductive: they use the unlabelled test features of a fold (never
their labels), as the ZeroDiff++ abstract describes.

* **Pseudo-labels**: the test features the base classifier assigns to an unseen class (calibrated
  GZSL prediction) whose probability *among the unseen classes* (renormalised over them) is at least
  ``threshold``; at most ``per_class`` of the most confident per class.
* **DiffGen** ("partially synthesised features that connect real and generated data"): a
  pseudo-labelled real feature is noised to step ``t_start + 1`` and denoised progressively by the
  DFG under the pseudo-label's semantics and an SC representation the DRG draws for that label; the
  results join the synthetic unseen set with their pseudo-labels.
* **DiffTTA** ("adapts the generator at test time using pseudo label reconstruction"): a copy of
  the DFG's generator is fine-tuned for ``steps`` steps to reconstruct pseudo-labelled features
  x0 from x_{t+1} (t ~ U{0..n_T-1}) under their pseudo-label semantics (MSE), then generates the
  synthetic unseen set anew.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from digzsl_ray.methods.zerodiff.schedule import q_sample_pairs


def pseudo_labels(probs: np.ndarray, seen: list[int], unseen: list[int], lam: float, threshold: float,
                  per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, unseen labels) of the test rows the classifier calls unseen with confidence."""
    from digzsl_ray.metrics.zsl import calibrate

    if not len(probs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pred = calibrate(probs, seen, lam).argmax(1)
    pu = np.where(np.isfinite(probs[:, unseen]), probs[:, unseen], 0.0)
    conf = probs[np.arange(len(probs)), pred] / np.clip(pu.sum(1), 1e-12, None)
    rows, labels = [], []
    for c in unseen:
        idx = np.where((pred == c) & (conf >= threshold))[0]
        idx = idx[np.argsort(-conf[idx], kind="stable")][:per_class]
        rows.append(idx)
        labels.append(np.full(len(idx), c, np.int64))
    return np.concatenate(rows), np.concatenate(labels)


def diffgen(dfg, drg, x: np.ndarray, labels: np.ndarray, att: torch.Tensor, t_start: int,
            copies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``copies`` partially synthesised features per pseudo-labelled real feature, and the
    representations they were conditioned on: r_hat drawn by the DRG from the pseudo-label's
    semantics, never the real feature's own r (which is computed from the feature and would carry its
    true identity into the copy)."""
    if not len(x):
        return (np.zeros((0, x.shape[1]), np.float32), np.zeros(0, np.int64),
                np.zeros((0, drg.G.net[-2].out_features), np.float32))
    gen = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.repeat(x, copies, 0))
    ys = np.repeat(labels, copies)
    a = att[torch.from_numpy(ys)]
    rs = drg.sample(a, gen=gen)
    with torch.random.fork_rng(devices=[]):  # the posterior's noise: seeded, the caller's state untouched
        torch.manual_seed(seed)
        out = dfg.sample(a, rs, progressive=True, x_start=xs, t_start=t_start, gen=gen)
    return out.cpu().numpy().astype(np.float32), ys, rs.cpu().numpy().astype(np.float32)


def difftta(dfg, x: np.ndarray, r: np.ndarray, labels: np.ndarray, att: torch.Tensor, steps: int, lr: float,
            batch: int, seed: int):
    """A copy of ``dfg`` whose generator was adapted to the pseudo-labelled features; and its loss curve."""
    adapted = copy.deepcopy(dfg)
    if not len(x) or steps == 0:
        return adapted, []
    gen = torch.Generator().manual_seed(seed)
    g = adapted.G
    g.train()
    opt = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    xt, rt, yt = torch.from_numpy(x), torch.from_numpy(r), torch.from_numpy(labels)
    dev = adapted.device
    curve = []
    for _ in range(steps):
        idx = torch.randint(len(xt), (min(batch, len(xt)),), generator=gen)
        x0, rb, a = xt[idx].to(dev), rt[idx].to(dev), att[yt[idx]].to(dev)
        t = torch.randint(adapted.c.n_t, (len(idx),), generator=gen).to(dev)
        _, x_tp1 = q_sample_pairs(adapted.s, x0, t)
        z = torch.randn(len(idx), g.noise_dim, device=dev)
        loss = torch.nn.functional.mse_loss(g(z, a, rb, x_tp1, t), x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(round(float(loss.detach()), 6))
    g.eval()
    return adapted, curve
