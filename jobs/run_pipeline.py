"""`ray job submit --working-dir . -- python -m jobs.run_pipeline --config C --out OUT [--set k=v ...]`

Runs the whole pipeline of the config's method (DIG-ZSL by default) on the cluster the job is submitted to (the job driver connects to
it through RAY_ADDRESS, which `ray job submit` sets). OUT must be on storage every node sees
(an NFS/EFS/Filestore mount, e.g. /mnt/shared/runs/NAME). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from digzsl_ray.cli.common import guarded, setup_logging

    p = argparse.ArgumentParser(prog="python -m jobs.run_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", default=None, help="YAML overrides or a shipped config name (default: MiniWorld)")
    p.add_argument("--out", "-o", required=True, help="run directory on shared storage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="plain logs instead of progress bars (job logs)")
    args = p.parse_args(argv)
    setup_logging()

    def run() -> int:
        from digzsl_ray.methods import get_method, load_run_config
        from digzsl_ray.metrics.zsl import format_headline
        from digzsl_ray.stages.runner import run_pipeline

        cfg = load_run_config(args.config, args.overrides)
        method = get_method(cfg.method)
        metrics = run_pipeline(cfg, method, args.out, progress=not args.no_progress)
        print((method.headline or format_headline)(metrics, method.variants))
        print(json.dumps({"out": args.out, "timing_s": metrics["timing_s"], "peak_rss_mb": metrics["peak_rss_mb"]}))
        return 0

    return guarded("run_pipeline", run)


if __name__ == "__main__":
    sys.exit(main())
