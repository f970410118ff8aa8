"""Stage: discriminative tuning of the SD text encoder on Ray Train -> ``OUT/text_encoder_tuned/``.

```
OUT/text_encoder_tuned/text_encoder/   the chosen text encoder (CLIPTextModel.save_pretrained), loadable by a
                                       stock StableDiffusionPipeline.from_pretrained(..., text_encoder=...)
OUT/text_encoder_tuned/summary.json    validation history, the chosen step, acceptance before / after
```
Every worker generates its own batch of target label sets per step (seeded by step and rank) and
backpropagates the asymmetric loss on the grouping-softmax probabilities of the frozen CLIP
through the last K denoising steps and the VAE decoder into the text encoder (:mod:`..tuning`);
with several workers the encoder is wrapped in DDP, so gradients are averaged. Every
``tune.eval_every`` steps rank 0 measures the filter's acceptance rate on ``tune.val_sets``
validation label sets (their own seed stream: images no training step saw, no test image) and
checkpoints; the chosen encoder is the checkpoint with the best validation acceptance (ties: the
higher mean target probability), step 0 (the untuned encoder) included, so tuning can never
export something validation says is worse. The best of several noisy validations is then
confirmed on ``tune.confirm_sets`` independent label sets (a seed stream of their own): the
untuned and the chosen encoder render the same sets, and the chosen one is exported only when
its gain in acceptance exceeds two standard errors of the paired difference; otherwise the
untuned encoder is exported and ``summary.json`` says so (``confirmation``).
"""

from __future__ import annotations

import json
import logging
import time

from digzsl_ray.distributed.faults import current_spec
from digzsl_ray.io import read_json, write_json
from digzsl_ray.stages.contract import Stage
from digzsl_ray.stages.rundir import stage_timing

log = logging.getLogger("digzsl")


def _draw(rng, labels: list[int], set_size: int, redraw_single: bool, confused) -> tuple[int, ...]:
    """One target set: ``set_size`` uniform draws, deduplicated; the COCO redraw rules (bounded)."""
    for _ in range(100):
        s = set(int(x) for x in rng.choice(labels, size=min(set_size, len(labels))))
        if redraw_single and len(s) == 1 and len(labels) > 1:
            s.add(int(rng.choice(labels)))
            if len(s) == 1:
                continue
        if any(c <= s for c in confused):
            continue
        return tuple(sorted(s))
    return tuple(sorted(s))


def validation_rows(cfg, split, phrases, confirm: bool = False) -> list:
    """The fixed validation label sets of tuning (a seed stream no training step uses); ``confirm``:
    the independent confirmation sets (``tune.confirm_sets``, a stream of their own)."""
    import numpy as np

    from digzsl_ray.methods.multilabel.generation import plan_rows

    g = cfg.generate
    rng = np.random.default_rng(np.random.SeedSequence([cfg.tune.seed, 525252 if confirm else 515151]))
    sets = [_draw(rng, list(split.unseen), g.set_size, g.redraw_single, confused_sets(cfg, split))
            for _ in range(cfg.tune.confirm_sets if confirm else cfg.tune.val_sets)]
    return plan_rows(sets, split.classes, phrases, cfg.tune.seed, "tune-confirm" if confirm else "tune-val")


def confirmed(untuned, tuned) -> dict:
    """Paired acceptance of the untuned and the chosen encoder on the confirmation sets (0/1 per set):
    the gain, its standard error (paired proportions: sqrt(b + c - (b - c)^2 / n) / n over the
    discordant counts b, c) and whether the gain exceeds two standard errors."""
    import numpy as np

    from digzsl_ray.metrics.multilabel import mcnemar

    m = mcnemar(np.asarray(tuned, bool), np.asarray(untuned, bool))  # a = tuned, b = untuned
    n, b, c = max(1, m["rows"]), m["a_only"], m["b_only"]
    gain = 100.0 * (b - c) / n
    se = 100.0 * float(np.sqrt(max(0.0, b + c - (b - c) ** 2 / n))) / n
    return {**m, "a": "tuned", "b": "untuned", "gain_pct": round(gain, 3), "se_pct": round(se, 3),
            "confirmed": bool(gain > 2 * se and gain > 0)}


def confused_sets(cfg, split) -> list[frozenset]:
    index = {n: i for i, n in enumerate(split.classes)}
    unknown = sorted({n for pair in cfg.generate.confusions for n in pair} - set(index))
    if unknown:
        from digzsl_ray.config import ConfigError

        raise ConfigError(f"generate.confusions: unknown label(s) {unknown[:5]}; expected names of the dataset's classes")
    return [frozenset((index[a], index[b])) for a, b in cfg.generate.confusions]


def _tuner_of(config: dict, cfg, device, world: int):
    """Step 2 of :func:`tune_worker`: the Stable Diffusion pipeline, the filter (``Discriminator``)
    and the tuner of its text encoder (fp32 weights; DDP-wrapped with several workers); returns
    ``(disc, tuner, encoder)``."""
    import ray.train.torch
    import torch

    from digzsl_ray.methods.multilabel.generation import Discriminator
    from digzsl_ray.methods.multilabel.tuning import TextEncoderTuner
    from digzsl_ray.models.presets import load_sd_pipeline
    from digzsl_ray.models.sd import latent_side

    t, g, f = cfg.tune, cfg.generate, cfg.filter
    names, unseen = config["classes"], config["unseen"]
    pipe = load_sd_pipeline(cfg.models.sd, device, cfg.models.precision, cfg.models.attention)
    if t.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    disc = Discriminator(cfg.models.clip, cfg.models.clip_pretrained, config["prototypes"], unseen, f.policy,
                         f.threshold, f.top_k, f.extra_threshold, config["parents"], f.image_size, str(device))
    encoder = pipe.text_encoder
    if encoder.dtype != torch.float32:  # fp16/bf16 on GPU: the trained encoder keeps fp32 weights (AdamW on
        encoder.to(torch.float32)       # half-precision weights loses small updates); UNet and VAE stay half
    tuner = TextEncoderTuner(pipe, disc.model, None, [names[i] for i in unseen], t, disc.mean, disc.std,
                             disc.size, text=disc.text, latent_side=latent_side(pipe, g.image_size))
    if world > 1:  # gradients averaged across workers; the tuner steps the same parameters
        pipe.text_encoder = ray.train.torch.prepare_model(encoder)
    return disc, tuner, encoder


def _accepted_on(encoder, tuner, disc, rows, batch_size: int) -> list[bool]:
    """The filter's decision on each of ``rows`` rendered by the current encoder."""
    import torch

    encoder.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        with torch.no_grad():
            imgs = tuner.images([r.prompt for r in part], [r.seed for r in part], grad=False)
        out += [bool(d.accepted) for d in disc.decide(imgs, [list(r.targets) for r in part])]
    encoder.train()
    return out


def _validate(encoder, tuner, disc, val, batch_size: int) -> dict:
    """Filter acceptance (%) and mean target probability on the validation label sets."""
    import numpy as np
    import torch

    encoder.eval()
    acc, tp = [], []
    for i in range(0, len(val), batch_size):
        part = val[i:i + batch_size]
        with torch.no_grad():
            imgs = tuner.images([r.prompt for r in part], [r.seed for r in part], grad=False)
        for r, d in zip(part, disc.decide(imgs, [list(r.targets) for r in part])):
            acc.append(d.accepted)
            cand = disc.candidates
            tp.append(float(np.mean([d.probs[cand.index(x)] for x in r.targets])))
    encoder.train()
    return {"val_acceptance": float(np.mean(acc) * 100), "val_target_prob": float(np.mean(tp))}


def _snapshot(encoder) -> dict:
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def _step_batch(rng, t, g, unseen: list, confused, phrases: dict, names: list[str]):
    """One step's target label sets, prompts and seeds, drawn from ``rng``; returns
    ``(prompts, targets, seeds)`` (``targets``: a bool matrix over the unseen labels)."""
    import torch

    from digzsl_ray.methods.multilabel.prompts import phrase_for

    pos = {c: i for i, c in enumerate(unseen)}
    sets = [_draw(rng, list(unseen), g.set_size, g.redraw_single, confused) for _ in range(t.batch_size)]
    prompts = [phrase_for(phrases, [names[j] for j in s], int(rng.integers(1 << 30))) for s in sets]
    seeds = [int(x) for x in rng.integers(0, 2**31 - 1, size=len(sets))]
    targets = torch.zeros((len(sets), len(unseen)), dtype=torch.bool)
    for i, s in enumerate(sets):
        targets[i, [pos[j] for j in s]] = True
    return prompts, targets, seeds


def _confirm_and_export(config: dict, cfg, encoder, tuner, disc, val, confirm_rows, untuned_state, best: dict,
                        best_state, history: list, step_s: list, world: int) -> None:
    """Step 5 of :func:`tune_worker` (rank 0): the chosen step confirmed on independent label sets
    (else the untuned encoder), the exported encoder and ``summary.json``."""
    from pathlib import Path

    t = cfg.tune
    if best_state is None:  # zero steps and nothing restored: the untuned encoder
        best_state, best = _snapshot(encoder), {"step": 0, **_validate(encoder, tuner, disc, val, t.batch_size)}
    confirmation = None
    if confirm_rows and best["step"] != 0:  # the winner of several noisy validations, checked on new sets
        encoder.load_state_dict(untuned_state)
        before = _accepted_on(encoder, tuner, disc, confirm_rows, t.batch_size)
        encoder.load_state_dict(best_state)
        confirmation = {"step": best["step"],
                        **confirmed(before, _accepted_on(encoder, tuner, disc, confirm_rows, t.batch_size))}
        log.info("tune: step %d on %d confirmation sets: acceptance %+.1f points (SE %.1f) -> %s", best["step"],
                 len(confirm_rows), confirmation["gain_pct"], confirmation["se_pct"],
                 "exported" if confirmation["confirmed"] else "not confirmed, the untuned encoder is exported")
        if not confirmation["confirmed"]:
            best_state, best = untuned_state, {**next(h for h in history if h.get("step") == 0),
                                               "not_confirmed_step": best["step"]}
    encoder.load_state_dict(best_state)
    out_dir = Path(config["out"])
    encoder.save_pretrained(str(out_dir / "text_encoder"), safe_serialization=True)
    first = next((h for h in history if h.get("step") == 0), {})
    write_json(out_dir / "summary.json", {
        "chosen_step": best["step"], "chosen": best, "untuned": first, "history": history,
        "confirmation": confirmation, "steps": t.steps,
        "selection": "highest filter acceptance on validation label sets (tune.val_sets), exported only when "
                     "its gain over the untuned encoder on tune.confirm_sets independent sets exceeds two "
                     "standard errors (tune.confirm_sets 0: not checked)",
        "step_seconds_mean": round(sum(step_s) / len(step_s), 4) if step_s else None,
        "step_seconds_steps": len(step_s), "world_size": world, "batch_size_per_worker": t.batch_size,
        "fingerprint": config["fingerprint"]})


def tune_worker(config: dict) -> None:
    """Ray Train worker: tune the text encoder; rank 0 validates, checkpoints and exports."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from digzsl_ray.distributed.cluster import quiet_train_worker_logs
    from digzsl_ray.distributed.faults import maybe_fail
    from digzsl_ray.distributed.trainloop import report_state, restore_state
    from digzsl_ray.methods.multilabel.config import MultilabelRunConfig
    from digzsl_ray.methods.multilabel.generation import Row

    # 1. Config, threads, device, this run's label phrases and confusable sets.
    quiet_train_worker_logs()
    cfg = MultilabelRunConfig.model_validate(config["cfg"])
    t, g = cfg.tune, cfg.generate
    torch.set_num_threads(cfg.models.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    names, unseen = config["classes"], config["unseen"]
    phrases = {tuple(k.split("\x00")): v for k, v in config["phrases"].items()}
    confused = [frozenset(c) for c in config["confused"]]

    # 2. The pipeline, the filter, the tuner; the validation and confirmation label sets.
    disc, tuner, encoder = _tuner_of(config, cfg, device, world)
    val = [Row(**r) for r in config["val_rows"]]
    confirm_rows = [Row(**r) for r in config.get("confirm_rows", [])]

    # 3. Resume, or (rank 0) validate the untuned encoder as step 0.
    untuned_state = _snapshot(encoder) if rank == 0 and confirm_rows else None  # loaded fresh: the untuned weights
    start, history, best, best_state = 0, [], None, None
    st = restore_state()
    if st:
        encoder.load_state_dict(st["encoder"])
        tuner.opt.load_state_dict(st["opt"])
        start, history, best, best_state = st["step"], st["history"], st["best"], st["best_state"]
        history.append({"resumed_at_step": start})
    elif rank == 0:
        v = _validate(encoder, tuner, disc, val, t.batch_size)
        best, best_state = {"step": 0, **v}, _snapshot(encoder)
        history.append({"step": 0, **v})
        log.info("tune: step 0 (untuned) validation acceptance %.1f%%, target prob %.3f", v["val_acceptance"],
                 v["val_target_prob"])

    # 4. Steps; every tune.eval_every of them rank 0 validates, and every worker reports a checkpoint.
    from tqdm.auto import tqdm

    bar = tqdm(total=t.steps, initial=start, desc="tune text encoder", unit="step", disable=rank != 0,
               dynamic_ncols=True, mininterval=2.0)
    losses, step_s = [], []
    for step in range(start, t.steps):
        t_step = time.perf_counter()
        maybe_fail("tune", spec=config.get("fault", ""), epoch=step)
        rng = np.random.default_rng(np.random.SeedSequence([t.seed, 616161, rank, step]))
        prompts, targets, seeds = _step_batch(rng, t, g, unseen, confused, phrases, names)
        out = tuner.step(prompts, targets, seeds)
        step_s.append(time.perf_counter() - t_step)
        losses.append(out["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.3f}", p=f"{out['target_prob']:.2f}")
        done = step + 1
        if done % t.eval_every == 0 or done == t.steps:
            row = {"step": done, "loss": float(np.mean(losses)), "skipped": 0 if out["applied"] else 1}
            losses = []
            if rank == 0:
                v = _validate(encoder, tuner, disc, val, t.batch_size)
                row.update(v)
                if (v["val_acceptance"], v["val_target_prob"]) > (best["val_acceptance"], best["val_target_prob"]):
                    best, best_state = {"step": done, **v}, _snapshot(encoder)
                log.info("tune: step %d loss %.3f, validation acceptance %.1f%% (best %.1f%% at step %d)", done,
                         row["loss"], v["val_acceptance"], best["val_acceptance"], best["step"])
            history.append(row)
            report_state(row, {"encoder": encoder.state_dict(), "opt": tuner.opt.state_dict(), "step": done,
                               "history": history, "best": best, "best_state": best_state}, rank)
    bar.close()

    # 5. Rank 0: confirm the chosen step, export the encoder and the summary.
    if rank == 0:
        _confirm_and_export(config, cfg, encoder, tuner, disc, val, confirm_rows, untuned_state, best, best_state,
                            history, step_s, world)


class TuneStage(Stage):
    name = "tune-text-encoder"
    help = "tune the SD text encoder so prompts render every named label (Ray Train) -> OUT/text_encoder_tuned/"
    writes = {"dir": "text_encoder_tuned", "text_encoder": "text_encoder_tuned/text_encoder",
              "weights": "text_encoder_tuned/text_encoder/model.safetensors",
              "summary": "text_encoder_tuned/summary.json"}
    reads = ("prototypes:prototypes", "prompts:index")
    depends_on = ("tune", "generate.set_size", "generate.redraw_single", "generate.confusions", "generate.image_size",
                  "filter", "models.sd", "models.clip", "models.clip_pretrained", "models.precision")

    def complete(self, ctx) -> bool:
        if not ctx.cfg.tune.enabled:
            return True
        p = ctx.path("tune-text-encoder:summary")
        return (p.is_file() and ctx.path("tune-text-encoder:weights").is_file()
                and read_json(p).get("fingerprint") == self.fingerprint(ctx))

    def cached(self, ctx):
        if not ctx.cfg.tune.enabled:
            return {"skipped": "tune.enabled is false"}
        s = read_json(ctx.path("tune-text-encoder:summary"))
        return {"chosen_step": s["chosen_step"], "val_acceptance": s["chosen"]["val_acceptance"],
                "untuned_val_acceptance": s["untuned"].get("val_acceptance")}

    def curves(self, ctx) -> dict:
        from digzsl_ray.methods.multilabel.curves import tuning_curves

        return tuning_curves(ctx)

    def run(self, ctx):
        from digzsl_ray.distributed.trainloop import fit, make_trainer
        from digzsl_ray.methods.multilabel.prompts import read_phrases

        cfg, split = ctx.cfg, ctx.split
        if not cfg.tune.enabled:
            return self.cached(ctx)
        t0 = time.time()
        fp = self.fingerprint(ctx)
        ctx.path("tune-text-encoder:summary").unlink(missing_ok=True)
        phrases = read_phrases(ctx.require("prompts:dir"), read_json(ctx.require("prompts:index")))
        index = {n: i for i, n in enumerate(split.classes)}
        parents = {index[k]: [index[p] for p in v if p in index] for k, v in cfg.filter.parents.items() if k in index}
        w = cfg.tune.workers
        trainer = make_trainer(tune_worker, {
            "fault": current_spec(), "cfg": cfg.model_dump(mode="json"), "classes": list(split.classes),
            "unseen": list(split.unseen), "phrases": {"\x00".join(k): v for k, v in phrases.items()},
            "confused": [sorted(c) for c in confused_sets(cfg, split)], "parents": parents,
            "prototypes": str(ctx.require("prototypes:prototypes")),
            "val_rows": [r.__dict__ for r in validation_rows(cfg, split, phrases)],
            "confirm_rows": [r.__dict__ for r in validation_rows(cfg, split, phrases, confirm=True)],
            "out": str(ctx.path("tune-text-encoder:dir")), "fingerprint": fp},
            name=f"tune-{fp}", storage=ctx.rd.ray_storage, num_workers=w.num_workers, use_gpu=w.use_gpu,
            cpus_per_worker=w.cpus_per_worker, max_failures=w.max_failures, keep=1)
        fit(trainer, cfg.ray.keep_checkpoints)
        stage_timing(ctx.rd, "tune_text_encoder", time.time() - t0)
        out = self.cached(ctx)
        log.info("tune: exported step %s (validation acceptance %.1f%%, untuned %.1f%%)", out["chosen_step"],
                 out["val_acceptance"], out["untuned_val_acceptance"] or 0.0)
        return out

    def describe(self, ctx, result) -> str:
        return json.dumps(result)
