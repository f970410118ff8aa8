"""Stage: train the DRG then the DFG of each fold on Ray Train -> ``OUT/generators/<fold>/``.

With ``generators.workers.num_workers: 2`` the validation fold and the final fold train side by
side, one per worker (independent models: no gradient all-reduce); with 1 they train one after
the other. Every epoch each worker checkpoints its folds' whole state (networks, optimisers, the
adaptive penalty weight, RNG states, history) as ``state-<fold>.pt``; Ray Train merges the
workers' files into one checkpoint and restarts failed workers from it (``max_failures``), so a
lost worker resumes at its last epoch. Every ``generators.spurious_every`` DFG epochs the
spuriousness metrics are logged (:mod:`..spurious`).

Outputs per fold: ``drg.safetensors``, ``dfg.safetensors`` and ``history.json`` (per-epoch losses,
Wasserstein estimates, lambda, spuriousness; the fingerprint).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from digzsl_ray.io import read_json
from digzsl_ray.methods.zerodiff.folds import FOLDS
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def _restore_folds(cfg, mine: list[str], prepared: dict, device) -> dict:
    """Step 3 of :func:`generators_worker`: each of this worker's folds' networks from their own
    seeds; a restarted worker loads its folds' last checkpoint. Returns ``{fold: (drg, dfg, state)}``."""
    import ray.train
    import torch

    from digzsl_ray.methods.zerodiff.models import build_gans

    ckpt = ray.train.get_checkpoint()
    saved = {}
    if ckpt:
        with ckpt.as_directory() as d:
            for f in mine:
                if (Path(d) / f"state-{f}.pt").is_file():
                    saved[f] = torch.load(Path(d) / f"state-{f}.pt", map_location="cpu", weights_only=True)
    state = {}
    for f in mine:
        drg, dfg = build_gans(cfg, prepared[f], device, FOLDS.index(f))
        st = {"phase": "drg", "epoch": -1, "history": []}
        if f in saved:
            st = saved[f]
            drg.load_state_dict(st["drg"])
            dfg.load_state_dict(st["dfg"])
            torch.set_rng_state(st["torch_rng"])
            st["history"].append({"resumed_at": {"phase": st["phase"], "epoch": st["epoch"] + 1}})
        state[f] = (drg, dfg, st)
    return state


def _checkpoint(state: dict, metrics: dict) -> None:
    """Report a checkpoint of every fold's whole state (networks,
    optimisers, penalty weight, RNG states, history)."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as d:
        for f in state:
            drg, dfg, st = state[f]
            torch.save({**st, "drg": drg.state_dict(), "dfg": dfg.state_dict(), "torch_rng": torch.get_rng_state()},
                       Path(d) / f"state-{f}.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _train_fold(config: dict, cfg, f: str, state: dict, p, att, step: int) -> int:
    """Step 4 of :func:`generators_worker` for fold ``f``: the DRG's epochs, then the DFG's
    (spuriousness every ``generators.spurious_every`` DFG epochs), each phase from its own seed;
    checkpoints every ``generators.checkpoint_every`` epochs. Returns the step counter after it."""
    import torch

    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.methods.zerodiff.models import generated_unseen, phase_seeds
    from digzsl_ray.methods.zerodiff.spurious import spuriousness

    drg, dfg, st = state[f]
    yt = torch.from_numpy(p.y["train"])
    xt, rt = torch.from_numpy(p.x["train"]), torch.from_numpy(p.r["train"])
    gen = torch.Generator()
    order = {"drg": 0, "dfg": 1, "done": 2}
    for phase, model, c in (("drg", drg, cfg.drg), ("dfg", dfg, cfg.dfg)):
        if order[st["phase"]] > order[phase]:  # finished before a restart
            step += c.epochs
            continue
        first = st["epoch"] + 1 if st["phase"] == phase else 0
        if first == 0:  # a phase starts from its own seeds (a resumed one from its saved states)
            gen_seed, torch_seed = phase_seeds(c, FOLDS.index(f))
            gen.manual_seed(gen_seed)
            torch.manual_seed(torch_seed)
        else:
            gen.set_state(st["gen"])
        step += first
        for epoch in range(first, c.epochs):
            maybe_fail("generators", spec=config.get("fault", ""), epoch=step)
            t0 = time.time()
            if phase == "drg":
                m = model.train_epoch(rt, yt, att, None, gen)
            else:
                m = model.train_epoch(xt, yt, att, rt, gen)
            m = {k: round(float(v), 5) for k, v in m.items()}
            rec = {"fold": f, "phase": phase, "epoch": epoch, **m, "seconds": round(time.time() - t0, 3)}
            last = epoch == c.epochs - 1
            if phase == "dfg" and ((epoch + 1) % cfg.generators.spurious_every == 0 or last):
                gx, gy = generated_unseen(drg, dfg, att, p.fold.unseen, 100, cfg.synthetic.seed + epoch)
                rec["spurious"] = spuriousness(dfg, att, (p.x["train"], p.y["train"]),
                                               (p.x["heldout"], p.y["heldout"]), (gx, gy),
                                               (p.x["test_unseen"], p.y["test_unseen"]))
            st["history"].append(rec)
            st["phase"], st["epoch"], st["gen"] = phase, epoch, gen.get_state()
            if last:
                st["phase"], st["epoch"] = ("dfg" if phase == "drg" else "done"), -1
            if last or (epoch + 1) % cfg.generators.checkpoint_every == 0:
                _checkpoint(state, {"fold": f, "phase": phase, "epoch": epoch, "wasserstein": m["wasserstein"]})
            step += 1
    return step


def _save_fold(config: dict, f: str, drg, dfg, st: dict, p) -> None:
    """Step 5 of :func:`generators_worker`: the fold's trained weights and history -> ``OUT/generators/<fold>/``."""
    from safetensors.torch import save_file

    from digzsl_ray.io import atomic_path, write_json

    out = Path(config["out"]) / f
    out.mkdir(parents=True, exist_ok=True)
    for name, model in (("drg", drg), ("dfg", dfg)):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file(model.weights(), str(tmp))
    write_json(out / "history.json", {"fingerprint": config["fingerprint"], "fold": f, "seen": p.fold.seen,
                                      "unseen": p.fold.unseen, "train_rows": int(len(p.y["train"])),
                                      "lambda_gp": {"drg": drg.lam, "dfg": dfg.lam}, "history": st["history"]})


def generators_worker(config: dict) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig
    from digzsl_ray.methods.zerodiff.features import load_features
    from digzsl_ray.methods.zerodiff.folds import folds_from, prepare
    from digzsl_ray.methods.zerodiff.models import load_representation

    # 1. Config, threads, device; this worker's folds.
    quiet_train_worker_logs()
    cfg = ZerodiffRunConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.models.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    mine = [f for i, f in enumerate(FOLDS) if i % world == rank]
    # 2. Each fold's scaled features, representations r and semantics.
    folds = folds_from(load_features(Path(config["features"])), config["plan"])
    att_np = np.asarray(config["att"], np.float32)
    att = torch.from_numpy(att_np)
    rep = Path(config["represent"])
    prepared = {f: prepare(folds[f], load_representation(rep, f, folds[f].x["train"].shape[1], cfg.represent),
                           att_np) for f in mine}
    # 3. Networks from their own seeds; a restarted worker loads its folds' last checkpoint.
    state = _restore_folds(cfg, mine, prepared, device)
    # 4. Per fold: the DRG's epochs, then the DFG's (spuriousness every generators.spurious_every DFG epochs),
    #    each phase from its own seed; a checkpoint of every fold's whole state (_checkpoint) every
    #    generators.checkpoint_every epochs.
    step = 0
    for f in mine:
        step = _train_fold(config, cfg, f, state, prepared[f], att, step)
        # 5. The fold's trained weights and history -> OUT/generators/<fold>/.
        drg, dfg, st = state[f]
        _save_fold(config, f, drg, dfg, st, prepared[f])


class GeneratorsStage(Stage):
    name = "train-generators"
    help = "train the DRG and DFG of the validation and final folds (Ray Train) -> OUT/generators/"
    writes = {"dir": "generators", "val": "generators/val/history.json", "final": "generators/final/history.json"}
    reads = ("extract-features:meta", "train-representation:meta", "prototypes:prototypes")
    depends_on = ("drg", "dfg", "semantics", "features.train_fraction", "features.train_split_file",
                  "features.fraction_seed", "generators.spurious_every", "synthetic.seed", "data.val_seed", "seed")

    def complete(self, ctx) -> bool:
        fp = self.fingerprint(ctx)
        return all(ctx.path(f"train-generators:{f}").is_file()
                   and read_json(ctx.path(f"train-generators:{f}")).get("fingerprint") == fp for f in FOLDS)

    def cached(self, ctx) -> dict:
        return {f: _summary(read_json(ctx.path(f"train-generators:{f}"))) for f in FOLDS}

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.zerodiff.curves import generator_curves

        return generator_curves(ctx)

    def run(self, ctx) -> dict:
        from digzsl_ray.distributed.faults import current_spec
        from digzsl_ray.distributed.trainloop import fit, make_trainer
        from digzsl_ray.methods.zerodiff.features import read_features
        from digzsl_ray.methods.zerodiff.folds import fold_plan
        from digzsl_ray.methods.zerodiff.semantics import class_semantics

        cfg, split = ctx.cfg, ctx.split
        t0 = time.time()
        fp = self.fingerprint(ctx)
        for f in FOLDS:
            ctx.path(f"train-generators:{f}").unlink(missing_ok=True)
        _, ytv = read_features(ctx.path("extract-features:dir") / "trainval")
        att = class_semantics(cfg, split, ctx.require("prototypes:prototypes"))
        w = cfg.generators.workers
        fit(make_trainer(generators_worker, {
            "cfg": cfg.model_dump(mode="json"), "plan": fold_plan(cfg, split, ytv), "att": att.tolist(),
            "features": str(ctx.path("extract-features:dir")), "represent": str(ctx.path("train-representation:dir")),
            "out": str(ctx.path("train-generators:dir")),
            "fingerprint": fp, "fault": current_spec()},
            name=f"generators-{fp}", storage=ctx.rd.ray_storage, num_workers=w.num_workers, use_gpu=w.use_gpu,
            cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures), cfg.ray.keep_checkpoints)
        stage_timing(ctx.rd, "generators", time.time() - t0)
        out = self.cached(ctx)
        log.info("generators: %s", out)
        return out


def _summary(h: dict) -> dict:
    recs = [r for r in h["history"] if "phase" in r]
    last = {ph: next((r for r in reversed(recs) if r["phase"] == ph), {}) for ph in ("drg", "dfg")}
    spur = next((r["spurious"] for r in reversed(recs) if "spurious" in r), {})
    return {"train_rows": h["train_rows"], "drg_wasserstein": last["drg"].get("wasserstein"),
            "dfg_wasserstein": last["dfg"].get("wasserstein"), "spurious_seen": spur.get("spurious_seen"),
            "spurious_unseen": spur.get("spurious_unseen")}
