"""Shared helpers of the benchmark scripts: the machine's description and saving one JSON line.

Benchmarks are scripts (never collected as tests): each prints one JSON line and saves it to
benchmarks/results/<name>.json together with the machine it ran on.
"""

from __future__ import annotations

import json
import statistics
import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "ray", "diffusers", "transformers", "open_clip"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "gpu": gpu, "python": platform.python_version(),
            "versions": versions, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def save(name: str, result: dict) -> dict:
    out = {"benchmark": name, **result, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def mean_std(values: list[float]) -> dict:
    """``{"mean", "std" (sample, ddof=1; 0 for one value), "values"}`` of a metric over seeds."""
    return {"mean": round(statistics.fmean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0, "values": values}


def seed_parser(description: str, config: str, out: str, name: str):
    """The command line every per-seed ablation script takes (seeds, config, out, keep, resume, set, name)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default=config)
    ap.add_argument("--out", default=out)
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--resume", action="store_true", help="resume existing run directories")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--name", default=name)
    return ap


def run_seed(config: str, run: Path, overrides: list[str], resume: bool) -> tuple[float, dict]:
    """``digzsl run --config CONFIG --out RUN --set ...`` in a subprocess (a fresh directory unless
    ``resume``): (wall seconds, its metrics.json)."""
    import shutil
    import subprocess
    import sys

    if not resume:
        shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "digzsl_ray.cli", "run", "--config", config, "--out", str(run)]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1), json.loads((Path(run) / "metrics.json").read_text())
