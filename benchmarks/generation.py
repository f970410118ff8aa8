"""generation: images per second through the Ray Data generation stage vs a bare diffusers loop.

ours: ``ray.data.from_items(rows).map_batches(ImageGenerator, compute=ActorPoolStrategy(size=1))``
consumed by the driver (PNG encoding and CDM scoring included, as in ``digzsl generate``).
bare: one process calling ``StableDiffusionPipeline(prompts, num_inference_steps, guidance_scale)``
on batches of the same size, images kept as tensors.
Same pipeline (MiniWorld), batch size, steps, guidance and torch threads; model loading excluded
from both (ours: the first batch is a warm-up).

    python benchmarks/generation.py [--images 400] [--batch 25] [--threads 1,2]

Headline keys (``ours_img_s``, ``bare_img_s``, ``ratio``) are for one torch thread per process,
the way the generation stage runs its actors (``generate.num_cpus=1``); ``by_threads`` adds two
threads, where a 2-thread OpenMP team on a 2-core machine shares the cores with Ray's own
processes (driver, raylet) and the actor loses about half its speed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def make_cdm(out: Path) -> list[int]:
    """A CDM for MiniWorld (untrained head: CLIP zero-shot), saved where ImageGenerator loads it."""
    from digzsl_ray.methods.digzsl.cdm import CDMHead, save_cdm
    from digzsl_ray.config import RunConfig
    from digzsl_ray.miniworld import world
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip
    from digzsl_ray.prototypes import build_prototypes

    names = [c.name for c in world.all_classes()]
    model, _, tok = load_clip("miniworld")
    protos = build_prototypes(model, tok, names, RunConfig().prototypes.templates)
    mean, std = clip_norm(model)
    save_cdm(out, CDMHead(protos, protos.shape[1], 256, 0.05),
             {"clip": "miniworld", "clip_pretrained": "", "hidden_dim": 256, "temperature": 0.05,
              "image_size": clip_image_size(model), "mean": list(mean), "std": list(std), "class_names": names,
              "seen": [], "history": [], "best_val_acc": 0.0})
    return [names.index(n) for n in world.choose_unseen(0, 18)]


def bare(n: int, batch: int, steps: int, guidance: float, threads: int, prompts: list[str]) -> float:
    import torch

    from digzsl_ray.models.presets import load_sd_pipeline

    torch.set_num_threads(threads)
    pipe = load_sd_pipeline("miniworld")
    pipe(prompts[:batch], num_inference_steps=steps, guidance_scale=guidance, output_type="pt")  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        g = [torch.Generator().manual_seed(done + i) for i in range(batch)]
        pipe(prompts[done : done + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g,
             output_type="pt")
        done += batch
    return done / (time.perf_counter() - t0)


def ours(n: int, batch: int, steps: int, guidance: float, threads: int, prompts, cdm_dir: Path, unseen) -> float:
    import ray

    from digzsl_ray.methods.digzsl.generation import ImageGenerator

    rows = [{"prompt": p, "seed": i, "label": unseen[i % len(unseen)]} for i, p in enumerate(prompts[: n + batch])]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows) // batch)
    ds = ds.map_batches(ImageGenerator, fn_constructor_kwargs=dict(
        sd="miniworld", tokens_dir=None, cdm_dir=str(cdm_dir), unseen=unseen, device="cpu", precision="fp32",
        attention="sdpa", steps=steps, guidance=guidance, threads=threads),
        batch_size=batch, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=threads, batch_format="numpy")
    seen, t0 = 0, None
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        seen += len(b["seed"])
        if t0 is None and seen >= batch:  # clock starts after the warm-up batch (actor + model loading)
            t0, seen = time.perf_counter(), 0
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", default="1,2",
                    help="torch threads per process, comma-separated; the first gives the headline keys")
    a = ap.parse_args()
    from digzsl_ray.miniworld import world

    names = [c.name for c in world.all_classes()]
    prompts = [f"a photo of a {names[i % len(names)]}" for i in range(a.images + 2 * a.batch)]
    import ray

    from digzsl_ray.distributed.cluster import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="genbench"))
    by_threads = {}
    try:
        unseen = make_cdm(tmp / "cdm")
        for threads in [int(t) for t in str(a.threads).split(",")]:
            b = bare(a.images, a.batch, a.steps, a.guidance, threads, prompts)
            init_ray(num_cpus=threads + 1)
            o = ours(a.images, a.batch, a.steps, a.guidance, threads, prompts, tmp / "cdm", unseen)
            ray.shutdown()
            by_threads[str(threads)] = {"ours_img_s": round(o, 2), "bare_img_s": round(b, 2), "ratio": round(o / b, 3)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    head = next(iter(by_threads.values()))
    save("generation", {**head, "by_threads": by_threads,
                        "settings": {"images": a.images, "batch": a.batch, "steps": a.steps, "guidance": a.guidance,
                                     "threads": a.threads, "actors": 1}})


if __name__ == "__main__":
    main()
