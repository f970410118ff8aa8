"""`ray job submit --working-dir . -- python -m jobs.run_pipeline --config C --out OUT [--set k=v ...]`

Runs the whole DIG-ZSL pipeline on the cluster the job is submitted to (the job driver connects to
it through RAY_ADDRESS, which `ray job submit` sets). OUT must be on storage every node sees
(an NFS/EFS/Filestore mount, e.g. /mnt/shared/runs/NAME). Exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from digzsl_ray.cli import user_errors
    from digzsl_ray.config import load_config
    from digzsl_ray.stages.evaluate import format_headline
    from digzsl_ray.stages.run import run_pipeline
    from digzsl_ray.stages_cli import _setup_logging

    p = argparse.ArgumentParser(prog="python -m jobs.run_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", default=None, help="YAML overrides or a shipped config name (default: MiniWorld)")
    p.add_argument("--out", "-o", required=True, help="run directory on shared storage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="plain logs instead of progress bars (job logs)")
    args = p.parse_args(argv)
    _setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        metrics = run_pipeline(cfg, args.out, progress=not args.no_progress)
    except user_errors() as e:
        print(f"run_pipeline: error: {e}", file=sys.stderr)
        return 2
    print(format_headline(metrics))
    print(json.dumps({"out": args.out, "timing_s": metrics["timing_s"], "peak_rss_mb": metrics["peak_rss_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
