"""zerodiff_scarce: ZeroDiff++'s variants in the scarce-data regime the paper is about.

For each fraction of the seen classes' training features (`features.train_fraction`, default 0.1 and
0.3) and each seed, runs `digzsl run --config miniworld --set method=zerodiff` with the seed overrides
of `zerodiff_ablation.py` and enough generator epochs that the critics see each training feature
hundreds of times (`--epochs`, per fraction: the DRG and the DFG both train that many epochs; the
spuriousness metrics and a checkpoint every `--spurious-every` epochs). Writes `benchmarks/results/zerodiff_scarce.json`:

    {"fractions": {"0.1": {"seeds", "variants": {variant: {metric: {"mean", "std", "values"}}},
                           "calibrations", "validation_fold", "pseudo_labels", "spuriousness",
                           "spurious_curve": {fold: [{"epoch", "spurious_seen_z", ...}]} (seed 0),
                           "wall_s", "settings"}, "0.3": {...}},
     "budget": ..., "machine"}

    python benchmarks/zerodiff_scarce.py [--fractions 0.1 0.3] [--epochs 300 100] [--seeds 0 1 2]
        [--out /tmp/digzsl-zd-scarce] [--keep] [--resume] [--evaluate-only] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_seed, save, seed_parser  # noqa: E402
from zerodiff_ablation import seed_overrides, summarise  # noqa: E402


def curve(run: Path) -> dict:
    """Spuriousness of each fold over the DFG epochs (the critics' overfitting as it grows)."""
    out = {}
    for fold in ("val", "final"):
        h = json.loads((run / "generators" / fold / "history.json").read_text())["history"]
        out[fold] = [{"epoch": r["epoch"], **{k: r["spurious"].get(k) for k in
                                              ("spurious_seen_z", "spurious_unseen_z", "semantic_error_unseen")}}
                     for r in h if "spurious" in r]
    return out


def evaluate_only(config: str, run: Path, overrides: list[str]) -> tuple[float, dict]:
    import subprocess
    import time

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "digzsl_ray.cli", "evaluate", "--config", config, "--out", str(run)]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1), json.loads((run / "metrics.json").read_text())


def main() -> None:
    ap = seed_parser(__doc__.split("\n\n")[0], "miniworld", "/tmp/digzsl-zd-scarce", "zerodiff_scarce")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--epochs", type=int, nargs="+", default=[300, 100],
                    help="DRG and DFG epochs per fraction (one value per --fractions entry)")
    ap.add_argument("--spurious-every", type=int, default=25)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="redo only `digzsl evaluate` on the kept run directories (no Ray; the generators reused)")
    a = ap.parse_args()
    if len(a.epochs) != len(a.fractions):
        ap.error("--epochs needs one value per --fractions entry")
    out = Path(a.out)
    result = {"fractions": {}, "budget": "2-core CPU machine; wall_s per run below (digzsl run, every stage)"}
    for frac, epochs in zip(a.fractions, a.epochs):
        sets = [f"features.train_fraction={frac}", f"drg.epochs={epochs}", f"dfg.epochs={epochs}",
                f"generators.spurious_every={a.spurious_every}", f"generators.checkpoint_every={a.spurious_every}"] + a.sets
        per_seed, wall = {}, {}
        for seed in a.seeds:
            run = out / f"fraction-{frac}" / f"seed-{seed}"
            overrides = ["method=zerodiff"] + seed_overrides(seed) + sets
            if a.evaluate_only:
                wall[seed], per_seed[seed] = evaluate_only(a.config, run, overrides)
            else:
                wall[seed], per_seed[seed] = run_seed(a.config, run, overrides, a.resume)
            print(json.dumps({"fraction": frac, "seed": seed, "wall_s": wall[seed],
                              **{v: [r["zsl_top1"], r["gzsl_H"], r["ausuc"]] for v, r in per_seed[seed]["ablation"].items()}}),
                  flush=True)
        entry = summarise(per_seed)
        entry.update(wall_s=wall, settings=sets, spurious_curve=curve(out / f"fraction-{frac}" / f"seed-{a.seeds[0]}"))
        result["fractions"][str(frac)] = entry
    result.update(config=a.config, seed_overrides="as zerodiff_ablation.py: seed, drg.seed = dfg.seed = 9182 + seed, "
                                                  "synthetic.seed = seed + 1, softmax.seed, data.val_seed")
    save(a.name, result)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
