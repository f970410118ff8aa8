"""The pipeline's subcommands, built from the method's stage list.

Every stage command takes ``--config C --out OUT [--set key=value ...]`` (plus the stage's own
flags), loads and validates the dataset, binds the run directory (refusing one made for other
classes) and runs its stage unless it is complete. ``digzsl run`` runs every stage in order;
``digzsl serve`` serves a finished run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from digzsl_ray.cli.common import add_config_args, add_verbose_arg, load_run_config, setup_logging


def cmd_stage(args) -> int:
    from digzsl_ray.stages.contract import check_inputs, execute
    from digzsl_ray.stages.runner import context

    setup_logging(args.verbose)
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

    setup_logging(args.verbose)
    cfg = load_run_config(args)
    method = _method(cfg)
    metrics = run_pipeline(cfg, method, args.out)
    print((method.headline or format_headline)(metrics, method.variants))
    print(f"time per stage (s): {json.dumps(metrics['timing_s'])}")
    print(f"peak resident memory of the process tree: {metrics['peak_rss_mb']:.0f} MB")
    print(f"metrics: {args.out}/metrics.json\nreport:  {args.out}/report.html")
    return 0


def cmd_serve(args) -> int:
    from digzsl_ray.cli.serve import serve_blocking

    setup_logging()
    return serve_blocking(args)


def cmd_add_class(args) -> int:
    """``digzsl add-class --run OUT --name NAME``: the service's add-class job, offline, to its end."""
    from tqdm.auto import tqdm

    from digzsl_ray.distributed.cluster import init_ray
    from digzsl_ray.errors import UserError
    from digzsl_ray.live.jobs import JobError, JobStore, run_job
    from digzsl_ray.live.names import name_problem, same_class
    from digzsl_ray.serve import add_class_fn, run_config, version_store

    setup_logging(args.verbose)
    run = Path(args.run)
    versions = version_store(run)
    overrides = [o if o.startswith("live.") else f"live.{o}" for o in args.overrides]
    overrides += ["live.activate=false"] if args.no_activate else []
    cfg = run_config(run, overrides)
    problem = name_problem(args.name, cfg.live.max_name_length)
    if problem:
        raise UserError(f"--name: {problem}")
    store = JobStore(run)
    resume = next((s for s in store.unfinished() if s["name"] == args.name), None)
    if resume is None and any(same_class(args.name, n) for n in versions.active()["classes"]):
        raise UserError(f"--name: class {args.name!r} is already known to the active version "
                        f"{versions.active_id()}")
    job, stages = add_class_fn(run, versions, overrides)  # the --set live.* overrides apply to this job
    if job is None:
        raise UserError(f"{run}: the {cfg.method!r} method cannot add classes to its runs")
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    state = resume or store.create(args.name, stages)
    if resume:
        print(f"resuming {state['id']} (stage {state.get('stage') or 'first'})")
    import threading

    bar = tqdm(total=len(stages), desc=f"add-class {args.name}", unit="stage", disable=args.no_progress)
    done = threading.Event()
    try:
        def watch():
            while not done.wait(1.0):
                try:
                    s = store.get(state["id"])
                except (JobError, OSError, ValueError):
                    continue
                bar.n = sum(1 for st in s["stages"].values() if st["status"] == "done")
                eta = f", ETA {s['eta_s']:.0f}s" if s.get("eta_s") is not None else ""
                bar.set_postfix_str(f"{s.get('stage') or ''} {100 * s['progress']:.0f}%{eta}", refresh=True)

        threading.Thread(target=watch, daemon=True).start()
        final = run_job(store, state, job)
    finally:
        done.set()
        bar.close()
    print(json.dumps({k: final.get(k) for k in ("id", "status", "version", "parent", "reason", "error", "metrics")},
                     indent=2))
    print({"succeeded": f"version {final['version']} written" + (" and activated" if cfg.live.activate else ""),
           "rejected": "rejected by the gate: no version written", "failed": "failed"}[final["status"]])
    return {"succeeded": 0, "rejected": 3, "failed": 1}[final["status"]]


def cmd_models(args) -> int:
    """``digzsl models --run OUT [--activate ID]``: the run's model versions; switch the served one."""
    from digzsl_ray.serve import version_store

    versions = version_store(args.run)
    if args.activate:
        versions.activate(args.activate)
    active = versions.active_id()
    for v in versions.list():
        mark = "*" if v["id"] == active else " "
        added = ", ".join(v.get("added_classes", [])) or "-"
        gate = v.get("metrics", {}).get("gate", {})
        fig = (f"  existing val {gate['existing_val_acc_parent']:.1f} -> {gate['existing_val_acc_new']:.1f}, "
               f"new class val {gate['new_class_val_acc']:.1f}") if gate else ""
        print(f"{mark} {v['id']}  parent {v.get('parent') or '-'}  classes {len(v['classes'])}  added: {added}{fig}")
    return 0


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
            text = "; ".join(f"method {m}: {st.help}" for m, st in owners)
        p = sub.add_parser(stage_name, help=text, description=text[0].upper() + text[1:] + ".")
        add_config_args(p)
        add_verbose_arg(p)
        seen_args: set = set()
        for _, st in owners:
            if type(st).add_arguments not in seen_args:
                seen_args.add(type(st).add_arguments)
                st.add_arguments(p)
        p.set_defaults(func=cmd_stage, stage=stage_name)
    p = sub.add_parser("run", help="the whole pipeline, skipping complete stages",
                       description="Run every stage of the config's method in order, skipping complete ones. "
                                   "Prints this project's lines and one progress bar per long step; --verbose "
                                   "adds every library's log lines.")
    add_config_args(p)
    add_verbose_arg(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("serve", help="serve the classifier of a run directory over HTTP (Ray Serve)",
                       description="Start the Ray Serve endpoint for a finished run directory: POST /v1/classify, "
                                   "GET /v1/classes, GET /healthz; and the live service (docs/live.md): POST "
                                   "/v1/classes (add a class from its name), GET /v1/jobs/<id>, GET /v1/models, POST "
                                   "/v1/models/<id>/activate, POST /v1/generate. The mutating routes and generation "
                                   "need the bearer token of DIGZSL_API_TOKEN_FILE or serve.api_token_file.")
    p.add_argument("--run", required=True, help="finished run directory (holds classifier/)")
    p.add_argument("--host", default=None, help="HTTP host (default: serve.host of the run's config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port, 8000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serve.* key, e.g. --set serve.max_batch_size=32")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("add-class", help="add a class to a finished run by its name: prototype, token, images, "
                                         "classifier, gate, new model version (what POST /v1/classes runs)",
                       description="Add one class to a finished run directory from its name (docs/live.md): its "
                                   "prototype, its token on the token actor pool, its synthetic images, an updated "
                                   "classifier, the validation gate, and a new immutable version in OUT/models/ "
                                   "(activated unless --no-activate). Resumes an unfinished job of the same name. "
                                   "Exit code 0: a new version; 3: rejected by the gate; 1: failed.")
    p.add_argument("--run", required=True, help="finished run directory")
    p.add_argument("--name", required=True, help="the class name to add")
    p.add_argument("--no-activate", action="store_true", help="write the version but keep serving the current one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a live.* key, e.g. --set live.classifier=extend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose_arg(p)
    p.set_defaults(func=cmd_add_class)
    p = sub.add_parser("models", help="list a run's model versions (* = served); --activate ID switches",
                       description="List the model versions of a run directory with their lineage and gate "
                                   "figures; --activate ID makes ID the served version (a running service follows "
                                   "within a fraction of a second).")
    p.add_argument("--run", required=True, help="finished run directory")
    p.add_argument("--activate", default="", metavar="ID", help="version to serve (rollback or roll forward)")
    p.set_defaults(func=cmd_models)
