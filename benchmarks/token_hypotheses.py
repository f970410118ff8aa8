"""token_hypotheses: the token-side settings of the issue "Beat the frozen CLIP" side by side.

Each setting was run over the same seeds from copies of the base runs (`benchmarks/ablation.py --base
BASE --set generate.plain_prompt=false --set KEY=VALUE --name ablation-NAME --out DIR --keep`); this
reads their results (`results/ablation*.json`) and the kept run directories' `tokens/summary.json`,
and writes per setting: dct's ZSL top-1 and GZSL H (mean ± std), the floor's, and the tokens'
own figures on fresh seeds (CDM and oracle accuracy of the learned token's images, updates, how
many reached the gamma stop).

    python benchmarks/token_hypotheses.py --base /tmp/abl-new --exp h4=/tmp/exp-h4 h1=/tmp/exp-h1 h3=/tmp/exp-h3
    # -> results/token_hypotheses.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, mean_std, save  # noqa: E402


def tokens_figures(runs: list[Path]) -> dict:
    rows = [json.loads((r / "tokens" / "summary.json").read_text()) for r in runs]
    out = {k: mean_std([round(float(x["mean"][k]), 2) for x in rows])
           for k in ("learned_cdm_acc", "learned_oracle_acc", "plain_oracle_acc")
           if all(x["mean"].get(k) is not None for x in rows)}
    out["mean_updates"] = mean_std([float(x["mean_updates"]) for x in rows])
    out["gamma_stops"] = mean_std([float(x.get("stop_reasons", {}).get("gamma", 0)) for x in rows])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the base ablation's kept run directories (seed-<s> inside)")
    ap.add_argument("--exp", nargs="+", required=True, help="NAME=DIR: results/ablation-NAME.json and its runs")
    a = ap.parse_args()
    out: dict = {}
    for name, res, runs in [("base", RESULTS / "ablation.json", Path(a.base))] + [
            (e.split("=")[0], RESULTS / f"ablation-{e.split('=')[0]}.json", Path(e.split("=")[1])) for e in a.exp]:
        r = json.loads(res.read_text())
        seeds = r["seeds"]
        out[name] = {"settings": r.get("settings", []), "seeds": seeds,
                     **{f"{v}_{k}": r["variants"][v][k] for v in ("dct", "clip_zero_shot", "no_synthetic")
                        for k in ("zsl_top1", "gzsl_H") if v in r["variants"]},
                     "tokens": tokens_figures([runs / f"seed-{s}" for s in seeds])}
        d = out[name]
        print(f"{name:<6} dct ZSL {d['dct_zsl_top1']['mean']:.1f} ± {d['dct_zsl_top1']['std']:.1f}  H "
              f"{d['dct_gzsl_H']['mean']:.1f} ± {d['dct_gzsl_H']['std']:.1f}  CDM ZSL "
              f"{d['no_synthetic_zsl_top1']['mean']:.1f}  token images oracle "
              f"{d['tokens'].get('learned_oracle_acc', {}).get('mean', float('nan')):.1f}%  CDM "
              f"{d['tokens']['learned_cdm_acc']['mean']:.1f}%  gamma stops {d['tokens']['gamma_stops']['mean']:.1f}/18  "
              f"{' '.join(d['settings'])}", flush=True)
    save("token_hypotheses", {"settings": out})


if __name__ == "__main__":
    main()
