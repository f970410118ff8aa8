"""Loading and sampling ZeroDiff's trained models (shared by the generator, evaluation and report
stages, which never import each other)."""

from __future__ import annotations


def load_representation(d, fold: str, in_dim: int, c):
    """The fold's trained representation net R (eval mode); ``c``: the run's ``represent`` section."""
    from safetensors.torch import load_file

    from digzsl_ray.methods.zerodiff.represent import RepresentationNet

    net = RepresentationNet(in_dim, c.hidden, c.r_dim, c.proj_dim)
    net.load_state_dict(load_file(str(d / f"{fold}.safetensors")))
    return net.eval()


def generated_unseen(drg, dfg, att, classes: list[int], per_class: int, seed: int, progressive: bool = False,
                     with_r: bool = False):
    """(features, labels[, representations]) of ``per_class`` DRG -> DFG samples of every class in ``classes``."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed)
    y = np.repeat(np.asarray(classes, np.int64), per_class)
    xs, rs = [np.zeros((0, dfg.G.net[-2].out_features), np.float32)], [np.zeros((0, drg.G.net[-2].out_features), np.float32)]
    for i in range(0, len(y), 4096):
        a = att[torch.from_numpy(y[i:i + 4096])]
        r = drg.sample(a, gen=gen)
        xs.append(dfg.sample(a, r, progressive=progressive, gen=gen).cpu().numpy())
        rs.append(r.cpu().numpy())
    x = np.concatenate(xs).astype(np.float32)
    return (x, y, np.concatenate(rs).astype(np.float32)) if with_r else (x, y)


def build_gans(cfg, p, device, fold_index: int = 0):
    """(DRG, DFG) of a fold, their initial weights drawn from ``drg.seed + fold_index`` and
    ``dfg.seed + fold_index`` whatever the process's random state (forked: the caller's is untouched)."""
    import torch

    from digzsl_ray.methods.zerodiff.gan import DFG, DRG

    a_dim, x_dim, r_dim = p.att.shape[1], p.x["train"].shape[1], p.r["train"].shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.drg.seed + fold_index)
        drg = DRG(a_dim, r_dim, cfg.drg, device)
        torch.manual_seed(cfg.dfg.seed + fold_index)
        dfg = DFG(a_dim, x_dim, r_dim, cfg.dfg, device, dec_normalise=cfg.semantics.normalise)
    return drg, dfg


def phase_seeds(c, fold_index: int) -> tuple[int, int]:
    """(batch generator seed, global torch seed) of one generator's training (``c``: drg or dfg
    section): each generator trains from its own seed, so ``drg.seed`` moves the DRG and only it."""
    return c.seed + fold_index, c.seed + fold_index + 7919


def load_fold_models(ctx, folds, att):
    """Prepared arrays, trained (DRG, DFG) and representation net of every fold in ``folds`` ({name: Fold})."""
    from safetensors.torch import load_file

    from digzsl_ray.methods.zerodiff.folds import prepare

    cfg = ctx.cfg
    out = {}
    for f in folds:
        net = load_representation(ctx.path("train-representation:dir"), f, folds[f].x["train"].shape[1], cfg.represent)
        p = prepare(folds[f], net, att)
        drg, dfg = build_gans(cfg, p, "cpu")
        d = ctx.path("train-generators:dir") / f
        drg.load_weights(load_file(str(d / "drg.safetensors")))
        dfg.load_weights(load_file(str(d / "dfg.safetensors")))
        out[f] = (p, drg, dfg, net)
    return out
