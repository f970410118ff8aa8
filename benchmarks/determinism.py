"""determinism: what differs between two runs of one seed, stage by stage, and by how much.

Runs the pipeline twice with the same seed overrides as benchmarks/ablation.py (or compares two
existing run directories with --compare A B) and writes benchmarks/results/determinism.json:

* per array file (prototypes, CDM scores and head, tokens, classifier weights and scores): whether it
  is bit-identical, and the largest absolute difference;
* per synthetic Parquet folder: the fraction of generated images with identical bytes;
* per metric of every variant (metrics.json `ablation`): both values and their difference.

    python benchmarks/determinism.py [--seed 0] [--config miniworld] [--out /tmp/digzsl-determinism]
    python benchmarks/determinism.py --compare RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import METRICS, seed_overrides  # noqa: E402
from common import save  # noqa: E402

ARRAYS = ("prototypes.safetensors", "cdm/scores.npz", "cdm/head.safetensors", "classifier/weights.safetensors",
          "classifier/scores.npz", "ablation/plain_prompt/classifier/weights.safetensors",
          "ablation/plain_prompt/classifier/scores.npz")


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from safetensors.numpy import load_file

    return load_file(str(path))


def compare_arrays(a: Path, b: Path) -> dict:
    x, y = _arrays(a), _arrays(b)
    if sorted(x) != sorted(y):
        return {"identical": False, "keys_differ": sorted(set(x) ^ set(y))}
    diffs = {k: float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))) if x[k].size else 0.0
             for k in x if x[k].shape == y[k].shape}
    worst = max(diffs, key=diffs.get) if diffs else None
    out = {"identical": all(np.array_equal(x[k], y[k]) for k in x), "max_abs_diff": max(diffs.values(), default=0.0),
           "worst_array": worst}
    if not out["identical"]:
        # arrays whose rows are the same set in another order (e.g. a stream's row order), per prefix group
        reordered = [k for k in x if not np.array_equal(x[k], y[k]) and _same_rows(x, y, k)]
        out["differ"] = sorted(k for k in x if not np.array_equal(x[k], y[k]))
        out["same_rows_other_order"] = sorted(reordered)
    return out


def _same_rows(x: dict, y: dict, key: str) -> bool:
    """Whether the arrays sharing ``key``'s prefix (``val_scores``/``val_labels``) hold the same rows in
    another order, rows matched jointly across those arrays."""
    prefix = key.rsplit("_", 1)[0]
    group = sorted(k for k in x if k.rsplit("_", 1)[0] == prefix and x[k].shape[:1] == x[key].shape[:1])

    def rows(d):
        cols = np.concatenate([d[k].reshape(len(d[k]), -1).astype(np.float64) for k in group], axis=1)
        return cols[np.lexsort(cols.T[::-1])]

    if any(x[k].shape != y[k].shape for k in group):
        return False
    return bool(np.array_equal(rows(x), rows(y)))


def _image_hashes(folder: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    out = {}
    for f in sorted(folder.glob("*.parquet")):
        t = pq.read_table(f)
        col = "image" if "image" in t.column_names else next(c for c in t.column_names if "image" in c or "png" in c)
        for i, v in enumerate(t.column(col).to_pylist()):
            data = v["bytes"] if isinstance(v, dict) else v
            out[f"{f.name.rsplit('-', 1)[0]}#{i}"] = hashlib.sha256(data).hexdigest()
    return out


def compare_images(a: Path, b: Path) -> dict:
    x, y = _image_hashes(a), _image_hashes(b)
    common = sorted(set(x) & set(y))
    same = sum(x[k] == y[k] for k in common)
    return {"images": len(common), "identical_fraction": round(same / len(common), 4) if common else None,
            "only_in_one": len(set(x) ^ set(y))}


def compare_tokens(a: Path, b: Path) -> dict:
    files = sorted(p.name for p in a.glob("*.safetensors"))
    per = {f: compare_arrays(a / f, b / f) for f in files if (b / f).is_file()}
    return {"files": len(per), "identical": sum(v["identical"] for v in per.values()),
            "max_abs_diff": max((v.get("max_abs_diff", 0.0) for v in per.values()), default=0.0)}


def compare_runs(a: Path, b: Path) -> dict:
    out: dict = {"arrays": {}, "images": {}}
    for rel in ARRAYS:
        if (a / rel).is_file() and (b / rel).is_file():
            out["arrays"][rel] = compare_arrays(a / rel, b / rel)
    if (a / "tokens").is_dir():
        out["tokens"] = compare_tokens(a / "tokens", b / "tokens")
    for folder in ("synthetic", "synthetic_plain"):
        if (a / folder).is_dir() and (b / folder).is_dir():
            out["images"][folder] = compare_images(a / folder, b / folder)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    out["metrics"] = {v: {k: {"a": ma["ablation"][v][k], "b": mb["ablation"][v][k],
                              "diff": round(float(mb["ablation"][v][k]) - float(ma["ablation"][v][k]), 4)}
                          for k in METRICS if k in ma["ablation"][v]}
                      for v in ma["ablation"] if v in mb["ablation"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="miniworld")
    ap.add_argument("--out", default="/tmp/digzsl-determinism")
    ap.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two existing run directories")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    a = ap.parse_args()
    wall = {}
    if a.compare:
        ra, rb = map(Path, a.compare)
    else:
        out = Path(a.out)
        ra, rb = out / "run-a", out / "run-b"
        for run in (ra, rb):
            shutil.rmtree(run, ignore_errors=True)
            cmd = [sys.executable, "-m", "digzsl_ray.cli", "run", "--config", a.config, "--out", str(run)]
            for o in seed_overrides(a.seed):
                cmd += ["--set", o]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall[run.name] = round(time.perf_counter() - t0, 1)
    result = {"seed": a.seed, "config": a.config, "runs": [str(ra), str(rb)], "wall_s": wall, **compare_runs(ra, rb)}
    save("determinism", result)
    if not a.compare and not a.keep:
        shutil.rmtree(Path(a.out), ignore_errors=True)


if __name__ == "__main__":
    main()
