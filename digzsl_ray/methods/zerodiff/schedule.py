"""The diffusion schedule of ZeroDiff: DDGAN's variance-preserving schedule with few steps.

``t_i = i / n_T (1 - 1e-3) + 1e-3`` for i = 0..n_T, ``var(t) = 1 - exp(-t^2/2 (b_max - b_min) - t b_min)``,
``alpha_bar_i = 1 - var(t_i)``, ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}`` with ``beta_0 = 1e-8``
prepended (FouriYe/ZeroDiff_ICLR25 ``zerodiff_tools.py`` after DDGAN). With n_T = 4 and
beta in [0.1, 20]: sqrt(alpha_bar) = [1, .722, .281, .059, .007].

``q_sample_pairs`` noises a real feature to a pair (x_t, x_{t+1}) ("diffusion augmentation");
``sample_posterior`` draws x_t from q(x_t | x_{t+1}, x_0) given a predicted x_0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class VPSchedule:
    n_t: int
    a_s: torch.Tensor  # sqrt(1 - beta_i), i = 0..n_T
    sigmas: torch.Tensor  # sqrt(beta_i)
    a_s_cum: torch.Tensor  # sqrt(alpha_bar_i)
    sigmas_cum: torch.Tensor  # sqrt(1 - alpha_bar_i)
    post_coef1: torch.Tensor  # posterior mean coefficients over beta[1:], index t = 0..n_T-1
    post_coef2: torch.Tensor
    post_logvar: torch.Tensor

    def to(self, device) -> "VPSchedule":
        return VPSchedule(self.n_t, *(getattr(self, k).to(device) for k in
                                      ("a_s", "sigmas", "a_s_cum", "sigmas_cum", "post_coef1", "post_coef2",
                                       "post_logvar")))


def vp_schedule(n_t: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> VPSchedule:
    eps_small = 1e-3
    t = np.arange(0, n_t + 1, dtype=np.float64) / n_t * (1.0 - eps_small) + eps_small
    log_mean = -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min
    alpha_bars = 1.0 - (1.0 - np.exp(2.0 * log_mean))
    betas = np.concatenate([[1e-8], 1.0 - alpha_bars[1:] / alpha_bars[:-1]])
    a_s = np.sqrt(1.0 - betas)
    a_s_cum = np.cumprod(a_s)
    sigmas_cum = np.sqrt(1.0 - a_s_cum ** 2)
    # posterior q(x_{t} | x_{t+1}, x0) over the n_T real steps (beta[1:])
    b = betas[1:]
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
    coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return VPSchedule(n_t, f(a_s), f(np.sqrt(betas)), f(a_s_cum), f(sigmas_cum), f(coef1), f(coef2),
                      f(np.log(np.clip(post_var, 1e-20, None))))


def _at(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return v.to(t.device)[t].unsqueeze(1)


def q_sample(s: VPSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    noise = torch.randn_like(x0) if noise is None else noise
    return _at(s.a_s_cum, t) * x0 + _at(s.sigmas_cum, t) * noise


def q_sample_pairs(s: VPSchedule, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_{t+1}) for t in 0..n_T-1: x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps'."""
    x_t = q_sample(s, x0, t)
    return x_t, _at(s.a_s, t + 1) * x_t + _at(s.sigmas, t + 1) * torch.randn_like(x0)


def sample_posterior(s: VPSchedule, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A draw of x_t from q(x_t | x_{t+1}, x0); no noise at t = 0."""
    mean = _at(s.post_coef1, t) * x0 + _at(s.post_coef2, t) * x_tp1
    nonzero = (t != 0).float().unsqueeze(1)
    return mean + nonzero * torch.exp(0.5 * _at(s.post_logvar, t)) * torch.randn_like(x_tp1)
