"""zerodiff_scale: ZeroDiff's throughput and memory.

1. Feature extraction: the MiniWorld CLIP tower on 32 px images, bare in this process vs the
   stage's Ray Data actor pool (2 actors, the stage's own `_extract`), images/s.
2. Generator epoch: one DFG epoch (MiniWorld fold size: 2,916 x 64-d features, widths 256) as a
   bare single-process loop vs inside the stage's Ray Train workers (the per-epoch `seconds` of a
   finished run's history.json, two folds side by side on the 2 cores).
3. SUN scale: 717 classes, 14,340 features of 2,048 dims, 102-d semantics, reference widths 4096,
   r 2048: peak memory of the features round trip through Parquet and of DFG training steps; the
   time of a full epoch is extrapolated from the measured steps (a CPU cannot run SUN's 400 epochs).

    python benchmarks/zerodiff_scale.py [--run /tmp/digzsl-zd-ablation/seed-0] [--sun-steps 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, save  # noqa: E402


def extraction(n: int) -> dict:
    from digzsl_ray.methods.zerodiff.features import FeatureExtractor
    from digzsl_ray.miniworld import world

    torch.set_num_threads(1)
    ex = FeatureExtractor({"backbone": "clip", "clip": "miniworld", "device": "cpu", "threads": 1})
    imgs = torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8)
    ex.features(imgs[:256])
    t0 = time.perf_counter()
    for i in range(0, n, 256):
        ex.features(imgs[i:i + 256])
    bare = n / (time.perf_counter() - t0)
    # the stage's Ray Data path (image decoding included) on rendered PNGs
    import ray

    from digzsl_ray.data.split import Item
    from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig
    from digzsl_ray.methods.zerodiff.stages.features import FeaturesStage
    from digzsl_ray.stages.contract import Context

    d = Path(tempfile.mkdtemp())
    spec = world.all_classes()[0]
    items = []
    for i in range(n):
        p = d / f"{i}.png"
        world.render(spec, 0, 0, i).save(p)
        items.append(Item(str(p), (0,)))
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    cfg = ZerodiffRunConfig()
    ctx = Context(cfg=cfg, rd=None, split=None, method=None, progress=False)
    stage = FeaturesStage()
    stage._extract(ctx, {"backbone": "clip", "clip": "miniworld", "device": "cpu", "threads": 1}, {"trainval": items[:256]})
    t0 = time.perf_counter()
    got = stage._extract(ctx, {"backbone": "clip", "clip": "miniworld", "device": "cpu", "threads": 1},
                         {"trainval": items})
    ray_s = time.perf_counter() - t0
    ray.shutdown()
    assert got["trainval"][0].shape == (n, 64)
    return {"images": n, "bare_images_per_s": round(bare, 1), "ray_data_images_per_s": round(n / ray_s, 1),
            "ray_data_includes": "PNG decoding, actor start-up of 2 actors, driver collection"}


def generator_epoch(run: Path | None) -> dict:
    from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig
    from digzsl_ray.methods.zerodiff.gan import DFG

    torch.set_num_threads(1)
    cfg = ZerodiffRunConfig()
    n = 2916
    x, r = torch.rand(n, 64), torch.rand(n, 64)
    y = torch.randint(48, (n,))
    att = torch.nn.functional.normalize(torch.randn(72, 64), dim=1)
    d = DFG(64, 64, 64, cfg.dfg)
    gen = torch.Generator().manual_seed(0)
    d.train_epoch(x, y, att, r, gen)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        d.train_epoch(x, y, att, r, gen)
        times.append(time.perf_counter() - t0)
    out = {"rows": n, "bare_dfg_epoch_s": round(float(np.median(times)), 3), "threads": 1}
    if run is not None and (run / "generators" / "final" / "history.json").is_file():
        worker = []
        for fold in ("val", "final"):
            h = json.loads((run / "generators" / fold / "history.json").read_text())
            worker += [rec["seconds"] for rec in h["history"] if rec.get("phase") == "dfg"]
        out.update(ray_train_dfg_epoch_s=round(float(np.median(worker)), 3), run=str(run),
                   ray_train_note="median over both folds' DFG epochs, two workers side by side on 2 cores "
                                  "(1 thread each), spuriousness epochs included")
        out["ratio"] = round(out["ray_train_dfg_epoch_s"] / out["bare_dfg_epoch_s"], 3)
    return out


def sun_scale(steps: int) -> dict:
    from digzsl_ray.methods.zerodiff.config import ZerodiffRunConfig
    from digzsl_ray.methods.zerodiff.features import read_features, write_feature_shards
    from digzsl_ray.methods.zerodiff.gan import DFG

    torch.set_num_threads(2)
    n, dim, classes, a_dim = 14_340, 2048, 717, 102
    rng = np.random.default_rng(0)
    base = peak_rss_mb()
    x = rng.random((n, dim), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    d = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    write_feature_shards(d, np.arange(n), labels, [f"img{i}.jpg" for i in range(n)], x)
    back, _ = read_features(d)
    parquet_s = time.perf_counter() - t0
    assert np.array_equal(back, x)
    after_io = peak_rss_mb()
    cfg = ZerodiffRunConfig()
    c = cfg.dfg.model_copy(update={"hidden": 4096, "critic_hidden": 4096, "batch_size": 64})
    xt, rt = torch.from_numpy(x), torch.from_numpy(rng.random((n, 2048), dtype=np.float32))
    yt = torch.from_numpy(labels)
    att = torch.nn.functional.normalize(torch.randn(classes, a_dim), dim=1)
    model = DFG(a_dim, dim, 2048, c)
    params = sum(p.numel() for m in model.modules().values() for p in m.parameters())
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):  # one generator step = critic_iter critic steps + 1 generator step
        for _ in range(c.critic_iter):
            model._critic_step(*model._batch(xt, yt, att, rt, gen), gen)
        model._generator_step(*model._batch(xt, yt, att, rt, gen))
    per_step = (time.perf_counter() - t0) / steps
    return {"classes": classes, "features": n, "dim": dim, "att_dim": a_dim, "widths": 4096, "r_dim": 2048,
            "dfg_parameters": params, "parquet_roundtrip_s": round(parquet_s, 2),
            "peak_rss_mb_before": round(base, 1), "peak_rss_mb_after_features": round(after_io, 1),
            "peak_rss_mb_after_training_steps": round(peak_rss_mb(), 1),
            "generator_step_s": round(per_step, 3), "steps_measured": steps,
            "epoch_s_extrapolated": round(per_step * (n // c.batch_size), 1), "threads": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="/tmp/digzsl-zd-ablation/seed-0", help="a finished zerodiff run (its history)")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--sun-steps", type=int, default=8)
    a = ap.parse_args()
    run = Path(a.run) if a.run else None
    result = {"generator_epoch": generator_epoch(run), "sun_scale": sun_scale(a.sun_steps),
              "extraction": extraction(a.images)}
    save("zerodiff_scale", result)


if __name__ == "__main__":
    main()
