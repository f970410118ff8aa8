"""dct_step: seconds and peak memory per DCT update, ours vs a bare single-process loop.

ours: ``digzsl_ray.methods.digzsl.dct.DCTLearner`` (the code the token actors run).
bare: a from-scratch loop with the structure of the original DCT implementation: textual-inversion
style (the whole token-embedding matrix is the trainable parameter; gradients of other rows are
masked and the rows restored after each step), every denoising step without gradient except the
last, VAE decode, the classifier, cross-entropy, one optimiser step.
Identical settings: the MiniWorld pipeline, batch 8, 10 DDIM steps, guidance 3, K=1, the same CDM.
Each implementation runs in its own process (peak RSS = that process's maximum).

    python benchmarks/dct_step.py [--updates 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402

CLASSES = None  # filled from the MiniWorld world in _setup


def _setup(threads: int):
    import torch

    from digzsl_ray.methods.digzsl.cdm import CDM, CDMHead
    from digzsl_ray.config import RunConfig
    from digzsl_ray.miniworld import world
    from digzsl_ray.models.presets import (
        clip_image_size,
        clip_norm,
        load_clip,
        load_sd_pipeline,
    )
    from digzsl_ray.prototypes import build_prototypes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    names = [c.name for c in world.all_classes()]
    unseen = [names.index(n) for n in world.choose_unseen(0, 18)]
    pipe = load_sd_pipeline("miniworld")
    model, _, tok = load_clip("miniworld")
    protos = build_prototypes(model, tok, names, RunConfig().prototypes.templates)
    cdm = CDM(model, CDMHead(protos, protos.shape[1], 256, 0.05), clip_image_size(model), *clip_norm(model))
    return pipe, cdm, names, unseen


def run_ours(updates: int, threads: int) -> dict:
    from digzsl_ray.methods.digzsl.config import DigzslRunConfig
    from digzsl_ray.methods.digzsl.dct import DCTLearner

    pipe, cdm, names, unseen = _setup(threads)
    s = DigzslRunConfig().tokens.model_copy(update={"max_updates": updates, "min_updates": updates, "gamma": 1.0})
    learner = DCTLearner(pipe, cdm, unseen, s)
    stamps = []
    c = unseen[0]
    learner.learn(names[c], c, "<dct-bench>", names[c].split()[-1], progress=lambda *a: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # skip the first (warm-up) update
    return {"s": statistics.median(steps), "peak_mb": peak_rss_mb(), "updates": len(steps)}


def run_bare(updates: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from digzsl_ray.methods.digzsl.config import DigzslRunConfig

    pipe, cdm, names, unseen = _setup(threads)
    t = DigzslRunConfig().tokens
    tok, te, unet, vae, sched = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler
    c = unseen[0]
    name = names[c]
    # textual-inversion setup: new token, whole embedding matrix trainable, other rows restored
    tok.add_tokens(["<bare-token>"])
    tid = tok.convert_tokens_to_ids("<bare-token>")
    te.resize_token_embeddings(len(tok), mean_resizing=False)
    emb = te.get_input_embeddings()
    with torch.no_grad():
        emb.weight[tid] = emb.weight[tok(name.split()[-1], add_special_tokens=False).input_ids].mean(0)
    for m in (unet, vae, cdm):
        m.requires_grad_(False)
    te.requires_grad_(False)
    emb.weight.requires_grad_(True)
    orig = emb.weight.detach().clone()
    opt = torch.optim.AdamW([emb.weight], lr=t.lr, weight_decay=0.0)
    keep = torch.ones(len(tok), dtype=torch.bool)
    keep[tid] = False
    prompt = t.templates[0].format(token="<bare-token>", name=name)
    unseen_t = torch.tensor(unseen)
    target = torch.full((t.batch_size,), unseen.index(c))
    ids = tok([prompt] * t.batch_size, padding="max_length", max_length=77, return_tensors="pt").input_ids
    uids = tok([""] * t.batch_size, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        uncond = te(uids)[0]
    times = []
    for u in range(updates):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(u)
        lat = torch.randn((t.batch_size, 4, 8, 8), generator=g)
        cond = te(ids)[0]
        sched.set_timesteps(t.num_inference_steps)
        for i, ts in enumerate(sched.timesteps):
            last = i == len(sched.timesteps) - 1
            with torch.set_grad_enabled(last):
                e_u, e_c = unet(torch.cat([lat, lat]), ts, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                lat = sched.step(e_u + t.guidance_scale * (e_c - e_u), ts, lat).prev_sample
        img = (vae.decode(lat / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        loss = F.cross_entropy(cdm(img)[:, unseen_t], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            emb.weight[keep] = orig[keep]
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times[1:]), "peak_mb": peak_rss_mb(), "updates": len(times) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impl", choices=["ours", "bare"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.impl:
        r = (run_ours if a.impl == "ours" else run_bare)(a.updates, a.threads)
        print(json.dumps(r))
        return
    res = {}
    for impl in ("bare", "ours", "bare", "ours"):  # interleaved, best of two each
        out = subprocess.run([sys.executable, __file__, "--impl", impl, "--updates", str(a.updates),
                              "--threads", str(a.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        prev = res.get(impl)
        res[impl] = r if prev is None or r["s"] < prev["s"] else prev
    save("dct_step", {
        "ours_s": round(res["ours"]["s"], 4), "bare_s": round(res["bare"]["s"], 4),
        "time_ratio": round(res["ours"]["s"] / res["bare"]["s"], 3),
        "ours_peak_mb": round(res["ours"]["peak_mb"], 1), "bare_peak_mb": round(res["bare"]["peak_mb"], 1),
        "mem_ratio": round(res["ours"]["peak_mb"] / res["bare"]["peak_mb"], 3),
        "settings": {"batch": 8, "steps": 10, "grad_steps": 1, "guidance": 3.0, "threads": a.threads,
                     "updates_timed": res["ours"]["updates"]},
    })


if __name__ == "__main__":
    main()
