"""ZeroDiff's two diffusion-augmented WGANs as plain torch: :class:`DRG` (representation generator)
and :class:`DFG` (feature generator). A Ray Train worker (``stages/generators.py``) drives them
epoch by epoch; the maths here runs and is tested without Ray.

One generator step follows ``critic_iter`` critic steps, each on a fresh random batch (the
reference's loop). Every step draws t ~ U{0..n_T-1} and noises the real sample to (x_t, x_{t+1});
the generator predicts x0 from x_{t+1}; x_t of the fake comes from the posterior.

Critic loss (DFG): ``gamma_adv [g_x0 (D_x0(f) - D_x0(r)) + g_xt (D_xt(f) - D_xt(r)) + (D_xc(f) - D_xc(r))]
+ gamma_adv lambda GP + L_ML``, with one gradient penalty per critic on its own inputs, lambda
adapted after each round of critic steps (x1.1 when the mean raw penalty exceeds 1.05, /1.1 below
1.001; tfvaegan), and the Wasserstein mutual learning ``L_ML`` between per-sample estimates
``W_k = D_k(real) - D_k(fake)`` (:func:`mutual_learning`). The V2S decoder is trained in the critic
step with the weighted L1 and frozen in the generator step. Generator loss: ``gamma_vae (BCE + KL)
+ gamma_adv (-critics) + gamma_recons WeightedL1(V2S(x_hat0), a)``.
The DRG has two critics (semantic view on r, diffusion view on (r_t, r_{t+1})), no VAE and no
reconstruction; its generator conditions on r_t as the reference code does (``drg.condition``).
"""

from __future__ import annotations

import torch
from torch import nn

from digzsl_ray.methods.zerodiff.nets import DFGGenerator, DRGGenerator, Critic, Encoder, V2S, weighted_l1
from digzsl_ray.methods.zerodiff.schedule import q_sample, q_sample_pairs, sample_posterior, vp_schedule


def gradient_penalty(critic: nn.Module, real: list, fake: list, interp: tuple[int, ...] = (0,),
                     gen: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: mean (||grad D(x_hat)|| - 1)^2 at random interpolates of the ``interp`` inputs
    between real and fake (the other inputs are the conditions, shared)."""
    b = real[0].shape[0]
    alpha = torch.rand(b, 1, generator=gen).to(real[0].device)
    parts = list(real)
    for i in interp:
        parts[i] = (alpha * real[i] + (1 - alpha) * fake[i]).detach().requires_grad_(True)
    out = critic(*parts)
    grads = torch.autograd.grad(out.sum(), [parts[i] for i in interp], create_graph=True)
    g = torch.cat([x.flatten(1) for x in grads], 1)
    return ((g.norm(2, dim=1) - 1.0) ** 2).mean()


def mutual_learning(w: dict[str, torch.Tensor], f: torch.Tensor,
                    pairs: tuple[tuple[str, str, bool], ...]) -> torch.Tensor:
    """Wasserstein mutual learning: mean over samples of sum_k weight_k (W_a - sg W_b)^2, weight f
    (= sqrt(alpha_bar_t)^factor_dist) for pairs involving the diffusion view, 1 otherwise."""
    total = torch.zeros_like(f)
    for a, b, weighted in pairs:
        total = total + (f if weighted else 1.0) * (w[a] - w[b].detach()) ** 2
    return total.mean()


DFG_PAIRS = (("x0", "xt", True), ("xt", "x0", True), ("xc", "xt", True), ("xt", "xc", True),
             ("x0", "xc", False), ("xc", "x0", False))
DRG_PAIRS = (("x0", "xt", True), ("xt", "x0", True))


def adapt_lambda(lam: float, mean_raw_gp: float) -> float:
    """tfvaegan's adaptive gradient-penalty weight."""
    if mean_raw_gp > 1.05:
        return lam * 1.1
    if mean_raw_gp < 1.001:
        return lam / 1.1
    return lam


class _GAN:
    """What both generators share: schedule, optimisers, the epoch loop, state for checkpoints."""

    kind = ""

    def __init__(self, c, device):
        self.c, self.device = c, torch.device(device)
        self.s = vp_schedule(c.n_t, c.beta_min, c.beta_max).to(self.device)
        self.lam = float(c.lambda_gp)

    def _opt(self, params):
        return torch.optim.Adam(params, lr=self.c.lr, betas=(self.c.beta1, 0.999))

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "opts": {k: o.state_dict() for k, o in self.opts.items()}, "lam": self.lam}

    def load_state_dict(self, st: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(st["modules"][k])
        for k, o in self.opts.items():
            o.load_state_dict(st["opts"][k])
        self.lam = float(st["lam"])

    def weights(self) -> dict[str, torch.Tensor]:
        """Flat tensors of every module (for safetensors), keys ``module.param``."""
        return {f"{k}.{n}": v.detach().cpu().contiguous() for k, m in self.modules().items()
                for n, v in m.state_dict().items()}

    def load_weights(self, flat: dict[str, torch.Tensor]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict({n[len(k) + 1:]: v for n, v in flat.items() if n.startswith(k + ".")})

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, att: torch.Tensor, r: torch.Tensor | None,
                    gen: torch.Generator, wrap=None) -> dict:
        """One epoch (len(x) // batch generator steps). ``att``: [C, A] semantics by class."""
        c = self.c
        n = len(x)
        steps = max(1, n // c.batch_size)
        sums = {"loss_d": 0.0, "loss_g": 0.0, "wasserstein": 0.0, "gp": 0.0, "ml": 0.0}
        for m in self.modules().values():
            m.train()
        for _ in range(steps):
            gp_sum = 0.0
            for _ in range(c.critic_iter):
                d = self._critic_step(*self._batch(x, y, att, r, gen), gen)
                gp_sum += d["gp"]
                for k in ("loss_d", "wasserstein", "ml"):
                    sums[k] += d[k] / c.critic_iter
                sums["gp"] += d["gp"] / c.critic_iter
            if c.adaptive_gp:
                self.lam = adapt_lambda(self.lam, gp_sum / c.critic_iter)
            sums["loss_g"] += self._generator_step(*self._batch(x, y, att, r, gen))
        out = {k: v / steps for k, v in sums.items()}
        out["lambda_gp"] = self.lam
        return out

    def _batch(self, x, y, att, r, gen):
        idx = torch.randint(len(x), (self.c.batch_size,), generator=gen)
        t = torch.randint(self.c.n_t, (self.c.batch_size,), generator=gen)
        dev = self.device
        xb = x[idx].to(dev)
        return xb, att[y[idx]].to(dev), (r[idx].to(dev) if r is not None else None), t.to(dev)

    def _critic_update(self, adv: torch.Tensor, gp: torch.Tensor, ml: torch.Tensor) -> dict:
        """One optimiser step of the critics on gamma_adv (adv + lambda GP) + L_ML; the logged figures."""
        loss = self.c.gamma_adv * adv + self.c.gamma_adv * self.lam * gp + ml
        self.opts["d"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["d"].step()
        return {"loss_d": float(loss.detach()), "wasserstein": float(-adv.detach()), "gp": float(gp.detach()),
                "ml": float(ml.detach())}

    def _f(self, t):
        return self.s.a_s_cum[t] ** self.c.factor_dist


class DRG(_GAN):
    """The representation generator: r_hat0 from class semantics (the SC representation of a class's
    samples, which the DFG is conditioned on at generation time)."""

    kind = "drg"

    def __init__(self, att_dim: int, r_dim: int, c, device="cpu"):
        super().__init__(c, device)
        nz = c.noise_dim or att_dim
        dt = c.dim_t or att_dim
        self.G = DRGGenerator(att_dim, r_dim, nz, c.hidden, dt).to(self.device)
        self.D0 = Critic([r_dim, att_dim], c.critic_hidden).to(self.device)
        self.Dt = Critic([r_dim, r_dim, att_dim, att_dim], c.critic_hidden, t_index=3, dim_t=dt,
                         att_dim=att_dim).to(self.device)
        self.opts = {"g": self._opt(self.G.parameters()),
                     "d": self._opt(list(self.D0.parameters()) + list(self.Dt.parameters()))}

    def modules(self):
        return {"G": self.G, "D0": self.D0, "Dt": self.Dt}

    def _cond(self, r_t, r_tp1):
        return r_t if self.c.condition == "r_t" else r_tp1

    def _fake(self, a, r_t, r_tp1, t):
        z = torch.randn(len(a), self.G.noise_dim, device=self.device)
        f0 = self.G(z, a, self._cond(r_t, r_tp1), t)
        return f0, sample_posterior(self.s, f0, r_tp1, t)

    def _critic_step(self, r, a, _unused, t, gen):
        c = self.c
        r_t, r_tp1 = q_sample_pairs(self.s, r, t)
        with torch.no_grad():
            f0, f_t = self._fake(a, r_t, r_tp1, t)
        d0r, d0f = self.D0(r, a), self.D0(f0, a)
        dtr, dtf = self.Dt(r_t, r_tp1, a, t), self.Dt(f_t, r_tp1, a, t)
        adv = c.gamma_x0 * (d0f.mean() - d0r.mean()) + c.gamma_xt * (dtf.mean() - dtr.mean())
        gp = (c.gamma_x0 * gradient_penalty(self.D0, [r, a], [f0, a], gen=gen)
              + c.gamma_xt * gradient_penalty(self.Dt, [r_t, r_tp1, a, t], [f_t, r_tp1, a, t], gen=gen))
        ml = c.gamma_dist * mutual_learning({"x0": d0r - d0f, "xt": dtr - dtf}, self._f(t), DRG_PAIRS) \
            if c.gamma_dist > 0 else torch.zeros((), device=self.device)
        return self._critic_update(adv, gp, ml)

    def _generator_step(self, r, a, _unused, t) -> float:
        c = self.c
        r_t, r_tp1 = q_sample_pairs(self.s, r, t)
        f0, f_t = self._fake(a, r_t, r_tp1, t)
        loss = -c.gamma_adv * (c.gamma_x0 * self.D0(f0, a).mean() + c.gamma_xt * self.Dt(f_t, r_tp1, a, t).mean())
        self.opts["g"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["g"].step()
        return float(loss.detach())

    @torch.no_grad()
    def sample(self, a: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """r_hat0 in one step from pure noise at t = n_T - 1 (the reference's ``sample_from_model``)."""
        self.G.eval()
        a = a.to(self.device)
        z = torch.randn(len(a), self.G.noise_dim, generator=gen).to(self.device)
        eps = torch.randn(len(a), self.G.net[-2].out_features, generator=gen).to(self.device)
        t = torch.full((len(a),), self.c.n_t - 1, dtype=torch.long, device=self.device)
        return self.G(z, a, eps, t)


class DFG(_GAN):
    """The feature generator: x_hat0 from class semantics and an SC representation."""

    kind = "dfg"

    def __init__(self, att_dim: int, x_dim: int, r_dim: int, c, device="cpu", dec_normalise: bool = False):
        super().__init__(c, device)
        nz = c.noise_dim or att_dim
        dt = c.dim_t or att_dim
        h, hd = c.hidden, c.critic_hidden
        self.G = DFGGenerator(att_dim, x_dim, r_dim, nz, h, dt).to(self.device)
        self.E = Encoder(x_dim, att_dim, nz, h).to(self.device)
        self.D0 = Critic([x_dim, att_dim], hd).to(self.device)
        self.Dt = Critic([x_dim, x_dim, att_dim, att_dim, att_dim], hd, r_index=3, r_dim=r_dim, att_dim=att_dim,
                         t_index=4, dim_t=dt).to(self.device)
        self.Dc = Critic([x_dim, att_dim], hd, r_index=1, r_dim=r_dim, att_dim=att_dim).to(self.device)
        self.dec = V2S(x_dim, att_dim, c.dec_hidden or h, dec_normalise).to(self.device)
        self.opts = {"g": self._opt(list(self.G.parameters()) + list(self.E.parameters())),
                     "d": self._opt([p for m in (self.D0, self.Dt, self.Dc) for p in m.parameters()]),
                     "dec": torch.optim.Adam(self.dec.parameters(), lr=c.dec_lr, betas=(c.beta1, 0.999))}

    def modules(self):
        return {"G": self.G, "E": self.E, "D0": self.D0, "Dt": self.Dt, "Dc": self.Dc, "dec": self.dec}

    def _fake(self, z, a, r, x_tp1, t):
        f0 = self.G(z, a, r, x_tp1, t)
        return f0, sample_posterior(self.s, f0, x_tp1, t)

    def _critic_step(self, x, a, r, t, gen):
        c = self.c
        if c.gamma_recons > 0:  # the V2S decoder learns on real features here
            dl = c.gamma_recons * weighted_l1(self.dec(x)[0], a)
            self.opts["dec"].zero_grad(set_to_none=True)
            dl.backward()
            self.opts["dec"].step()
        x_t, x_tp1 = q_sample_pairs(self.s, x, t)
        with torch.no_grad():
            z = torch.randn(len(x), self.G.noise_dim, device=self.device)
            f0, f_t = self._fake(z, a, r, x_tp1, t)
        d0r, d0f = self.D0(x, a), self.D0(f0, a)
        dtr, dtf = self.Dt(x_t, x_tp1, a, r, t), self.Dt(f_t, x_tp1, a, r, t)
        dcr, dcf = self.Dc(x, r), self.Dc(f0, r)
        adv = (c.gamma_x0 * (d0f.mean() - d0r.mean()) + c.gamma_xt * (dtf.mean() - dtr.mean())
               + (dcf.mean() - dcr.mean()))
        gp = (c.gamma_x0 * gradient_penalty(self.D0, [x, a], [f0, a], gen=gen)
              + c.gamma_xt * gradient_penalty(self.Dt, [x_t, x_tp1, a, r, t], [f_t, x_tp1, a, r, t], gen=gen)
              + gradient_penalty(self.Dc, [x, r], [f0, r], gen=gen))
        ml = c.gamma_dist * mutual_learning({"x0": d0r - d0f, "xt": dtr - dtf, "xc": dcr - dcf}, self._f(t),
                                            DFG_PAIRS) if c.gamma_dist > 0 else torch.zeros((), device=self.device)
        return self._critic_update(adv, gp, ml)

    def _generator_step(self, x, a, r, t) -> float:
        c = self.c
        x_t, x_tp1 = q_sample_pairs(self.s, x, t)
        loss = torch.zeros((), device=self.device)
        if c.gamma_vae > 0:
            mu, logvar = self.E(x, a)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            recon = self.G(z, a, r, x_tp1, t)
            bce = nn.functional.binary_cross_entropy(recon.clamp(1e-12, 1 - 1e-7), x.clamp(0, 1), reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = loss + c.gamma_vae * (bce + kl) / len(x)
        z = torch.randn(len(x), self.G.noise_dim, device=self.device)
        f0, f_t = self._fake(z, a, r, x_tp1, t)
        adv = -(c.gamma_x0 * self.D0(f0, a).mean() + c.gamma_xt * self.Dt(f_t, x_tp1, a, r, t).mean()
                + self.Dc(f0, r).mean())
        loss = loss + c.gamma_adv * adv
        if c.gamma_recons > 0:
            for p in self.dec.parameters():  # frozen decoder (--freeze_dec)
                p.requires_grad_(False)
            loss = loss + c.gamma_recons * weighted_l1(self.dec(f0)[0], a)
            for p in self.dec.parameters():
                p.requires_grad_(True)
        self.opts["g"].zero_grad(set_to_none=True)
        loss.backward()
        self.opts["g"].step()
        return float(loss.detach())

    @torch.no_grad()
    def sample(self, a: torch.Tensor, r: torch.Tensor, progressive: bool = False, x_start: torch.Tensor | None = None,
               t_start: int | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """Features x_hat0 of semantics ``a`` [B, A] and representations ``r`` [B, R].

        One step (default): x_hat0 = G(z, a, r, x_T ~ N(0, I), t = n_T - 1). ``progressive``: from
        t_start (default n_T - 1) down to 0, x_t from the posterior between steps. ``x_start`` (real
        features, DiffGen): noised to x_{t_start+1} first, so the path starts from real data.
        """
        self.G.eval()
        dev = self.device
        a, r = a.to(dev), r.to(dev)
        b = len(a)
        k = self.c.n_t - 1 if t_start is None else int(t_start)
        z = torch.randn(b, self.G.noise_dim, generator=gen).to(dev)
        noise = torch.randn(b, self.G.net[-2].out_features, generator=gen).to(dev)
        if x_start is not None:
            x = q_sample(self.s, x_start.to(dev), torch.full((b,), k + 1, dtype=torch.long, device=dev), noise)
        else:
            x = noise
        if not progressive and x_start is None:
            return self.G(z, a, r, x, torch.full((b,), k, dtype=torch.long, device=dev))
        for t in range(k, -1, -1):
            tt = torch.full((b,), t, dtype=torch.long, device=dev)
            x0 = self.G(z, a, r, x, tt)
            x = sample_posterior(self.s, x0, x, tt) if t > 0 else x0
        return x

    @torch.no_grad()
    def critic_score(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """D_x0 scores (the semantic view), the spuriousness metrics' measuring stick."""
        self.D0.eval()
        return self.D0(x.to(self.device), a.to(self.device)).cpu()
