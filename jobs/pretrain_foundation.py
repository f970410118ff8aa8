"""`ray job submit --working-dir . -- python -m jobs.pretrain_foundation --data DIR --out DIR [--set k=v ...]`

Pretrains a tiny CLIP (open_clip format) and a tiny Stable Diffusion (diffusers format) on a
captioned image folder with Ray Train, on whatever cluster the job runs on: one CPU worker on a
laptop-sized machine, N GPU workers with `--set num_workers=N --set use_gpu=true`. Rerunning with
the same --out resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from digzsl_ray.cli.common import guarded, setup_logging
    from digzsl_ray.config import PretrainConfig, load_config

    p = argparse.ArgumentParser(prog="python -m jobs.pretrain_foundation", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="captioned image folder (metadata.jsonl + images)")
    p.add_argument("--out", "-o", required=True, help="output directory (sd/, clip/, pretrain.json)")
    p.add_argument("--config", "-c", default=None, help="YAML overrides of the pretraining config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one pretraining key, e.g. --set sd_steps=1000")
    args = p.parse_args(argv)

    def run() -> int:
        from digzsl_ray.distributed.cluster import init_ray
        from digzsl_ray.pretrain.job import run_pretrain

        cfg = load_config(args.config, args.overrides, PretrainConfig)
        setup_logging()
        init_ray(dashboard=True)  # Ray Train's placement-group cleaner needs it (else a warning a second)
        meta = run_pretrain(args.data, args.out, cfg)
        print(json.dumps({"out": args.out, "wall_seconds": meta["wall_seconds"]}))
        return 0

    return guarded("pretrain_foundation", run)


if __name__ == "__main__":
    sys.exit(main())
