"""The pipeline's subcommands, built from the method's stage list.

Every stage command takes ``--config C --out OUT [--set key=value ...]`` (plus the stage's own
flags), loads and validates the dataset, binds the run directory (refusing one made for other
classes) and runs its stage unless it is complete. ``digzsl run`` runs every stage in order;
``digzsl serve`` serves a finished run directory.
"""

from __future__ import annotations

import json

from digzsl_ray.cli.common import add_config_args, load_run_config, setup_logging


def cmd_stage(args) -> int:
    from digzsl_ray.stages.contract import check_inputs, execute
    from digzsl_ray.stages.runner import context

    setup_logging()
    cfg = load_run_config(args)
    method = _method(cfg)
    try:
        stage = method.stage(args.stage)
    except KeyError:
        from digzsl_ray.config import ConfigError

        raise ConfigError(f"method {method.name!r} (the config's `method:`) has no stage {args.stage!r}; its stages: "
                          f"{', '.join(s.name for s in method.stages)}") from None
    ctx = context(cfg, method, args.out, args=args)
    check_inputs(stage, ctx)  # a missing earlier output is a one-line error before Ray starts
    if stage.needs_ray:
        from digzsl_ray.distributed.cluster import init_from_config

        init_from_config(cfg.ray)
    result = execute(stage, ctx)
    text = stage.describe(ctx, result)
    if text:
        print(text)
    return 0


def cmd_run(args) -> int:
    from digzsl_ray.metrics.zsl import format_headline
    from digzsl_ray.stages.runner import run_pipeline

    setup_logging()
    cfg = load_run_config(args)
    method = _method(cfg)
    metrics = run_pipeline(cfg, method, args.out)
    print((method.headline or format_headline)(metrics, method.variants))
    print(f"time per stage (s): {json.dumps(metrics['timing_s'])}")
    print(f"peak resident memory of the process tree: {metrics['peak_rss_mb']:.0f} MB")
    print(f"metrics: {args.out}/metrics.json\nreport:  {args.out}/report.html")
    return 0


def cmd_serve(args) -> int:
    from digzsl_ray.serve import serve_blocking

    setup_logging()
    return serve_blocking(args)


def _method(cfg):
    from digzsl_ray.methods import get_method

    return get_method(cfg.method)


def register(sub) -> None:
    """Add one subcommand per stage name of every registered method (the config's ``method:`` picks
    whose stage runs), then run and serve."""
    from digzsl_ray.methods import get_method, registered

    by_name: dict[str, list] = {}
    for name in registered():
        for stage in get_method(name).stages:
            by_name.setdefault(stage.name, []).append((name, stage))
    for stage_name, owners in by_name.items():
        if len({st.help for _, st in owners}) == 1:
            text = owners[0][1].help + ("" if len(owners) > 1 or owners[0][0] == "digzsl" else f" (method {owners[0][0]})")
        else:
            text = "; ".join(f"{m}: {st.help}" for m, st in owners)
        p = sub.add_parser(stage_name, help=text, description=text[0].upper() + text[1:] + ".")
        add_config_args(p)
        seen_args: set = set()
        for _, st in owners:
            if type(st).add_arguments not in seen_args:
                seen_args.add(type(st).add_arguments)
                st.add_arguments(p)
        p.set_defaults(func=cmd_stage, stage=stage_name)
    p = sub.add_parser("run", help="the whole pipeline, skipping complete stages",
                       description="Run every stage of the config's method in order, skipping complete ones.")
    add_config_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("serve", help="serve the classifier of a run directory over HTTP (Ray Serve)",
                       description="Start the Ray Serve classification endpoint for a finished run directory: "
                                   "POST /v1/classify, GET /v1/classes, GET /healthz.")
    p.add_argument("--run", required=True, help="finished run directory (holds classifier/)")
    p.add_argument("--host", default=None, help="HTTP host (default: serve.host of the run's config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port, 8000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serve.* key, e.g. --set serve.max_batch_size=32")
    p.set_defaults(func=cmd_serve)
