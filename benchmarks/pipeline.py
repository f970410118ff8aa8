"""pipeline: wall time per stage and peak resident memory of the whole MiniWorld run.

Runs `digzsl run --config miniworld --out <fresh dir>` in a subprocess (the same command as
`make demo`) and reads `timing_s` and `peak_rss_mb` (the memory of the whole process tree: driver,
Ray daemons, every worker; the sum of their proportional set sizes, sampled every second; the naive
RSS sum, which counts shared pages once per process, is kept as `peak_rss_sum_mb`) from its
metrics.json.

    python benchmarks/pipeline.py [--out /tmp/digzsl-bench-run] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/digzsl-bench-run")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "digzsl_ray.cli", "run", "--config", "miniworld", "--out", str(out)],
                   check=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())

    def mb(p: Path) -> float:
        return round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20, 1) if p.exists() else 0.0

    # what a finished run occupies on disk, and its largest parts
    disk = {"total_mb": mb(out), **{f"{d.name}_mb": mb(d) for d in sorted(out.iterdir()) if d.is_dir()}}
    save("pipeline", {"timing_s": m["timing_s"], "peak_rss_mb": m["peak_rss_mb"], "disk": disk,
                      "peak_rss_sum_mb": m.get("peak_rss_sum_mb"), "peak_memory_breakdown": m.get("peak_memory_breakdown"),
                      "wall_s": round(wall, 1),
                      "zsl_top1": m["zsl_top1"], "gzsl_H": m["gzsl_H"]})
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
