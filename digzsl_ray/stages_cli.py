"""Pipeline stage commands of ``digzsl`` (registered by :mod:`digzsl_ray.cli`).

Every stage command takes ``--config C --out OUT [--set key=value ...]``, loads and validates the
dataset, binds the run directory (refusing one made for other classes) and runs its stage; a stage
whose outputs are complete is skipped.
"""

from __future__ import annotations

import json
import logging
import sys


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def _prepare(args, need_ray: bool = True):
    from .cli import _load
    from .raycluster import init_from_config
    from .stages.common import prepare

    _setup_logging()
    cfg = _load(args)
    rd, split = prepare(cfg, args.out)
    if need_ray:
        init_from_config(cfg.ray)
    return cfg, rd, split


def cmd_prototypes(args) -> int:
    from .stages.prototypes import run_prototypes

    cfg, rd, split = _prepare(args, need_ray=False)
    run_prototypes(cfg, rd, split)
    print(rd.prototypes)
    return 0


def cmd_train_cdm(args) -> int:
    from .stages.cdm import run_cdm

    cfg, rd, split = _prepare(args)
    print(json.dumps(run_cdm(cfg, rd, split), indent=2))
    return 0


def cmd_learn_tokens(args) -> int:
    from .stages.tokens import run_tokens

    cfg, rd, split = _prepare(args)
    summary = run_tokens(cfg, rd, split)
    print(json.dumps({"classes": summary["classes"], "mean": summary["mean"], "stop_reasons": summary["stop_reasons"]},
                     indent=2))
    return 0


def cmd_generate(args) -> int:
    from .stages.generate import run_generate

    cfg, rd, split = _prepare(args)
    manifests = run_generate(cfg, rd, split)
    print(json.dumps({v: m["rows"] for v, m in manifests.items()}))
    return 0


def cmd_train_classifier(args) -> int:
    from .stages.classifier import run_classifier
    from .stages.generate import variants

    cfg, rd, split = _prepare(args)
    todo = variants(cfg) if args.variant == "all" else [args.variant]
    for v in todo:
        print(run_classifier(cfg, rd, split, v))
    return 0


def cmd_evaluate(args) -> int:
    from .stages.evaluate import format_headline, run_evaluate
    from .stages.report import build_report

    cfg, rd, split = _prepare(args, need_ray=False)
    metrics = run_evaluate(cfg, rd, split)
    build_report(cfg, rd, split)
    print(format_headline(metrics))
    print(f"metrics: {rd.metrics}\nreport:  {rd.report}")
    return 0


def cmd_run(args) -> int:
    from .stages.evaluate import format_headline
    from .stages.run import run_pipeline

    from .cli import _load

    _setup_logging()
    cfg = _load(args)
    metrics = run_pipeline(cfg, args.out)
    print(format_headline(metrics))
    print(f"time per stage (s): {json.dumps(metrics['timing_s'])}")
    print(f"peak resident memory of the process tree: {metrics['peak_rss_mb']:.0f} MB")
    print(f"metrics: {args.out}/metrics.json\nreport:  {args.out}/report.html")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve_blocking

    _setup_logging()
    return serve_blocking(args)


STAGES = [
    ("prototypes", cmd_prototypes, "embed every class name with CLIP (prompt ensemble) -> OUT/prototypes.safetensors"),
    ("train-cdm", cmd_train_cdm, "train the category discrimination model on seen classes (Ray Train) -> OUT/cdm/"),
    ("learn-tokens", cmd_learn_tokens, "learn a discriminative class token per unseen class (Ray actor pool) -> OUT/tokens/"),
    ("generate", cmd_generate, "generate N images per unseen class with the tokens (Ray Data) -> OUT/synthetic/"),
    ("train-classifier", cmd_train_classifier, "train the ZSL classifier on real seen + synthetic unseen images "
                                               "(Ray Train fed by Ray Data) -> OUT/classifier/"),
    ("evaluate", cmd_evaluate, "ZSL top-1, GZSL U/S/H (calibrated on validation data), AUSUC -> OUT/metrics.json, "
                               "OUT/report.html"),
    ("run", cmd_run, "the whole pipeline, skipping complete stages"),
]


def register(sub, add_config_args) -> None:
    """Add the stage subcommands to ``sub`` (argparse subparsers)."""
    for name, func, help_text in STAGES:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_config_args(p)
        if name == "train-classifier":
            p.add_argument("--variant", default="all", choices=["all", "dct", "plain_prompt"],
                           help="which synthetic set to train with (default: all configured variants)")
        p.set_defaults(func=func)
    p = sub.add_parser("serve", help="serve the classifier of a run directory over HTTP (Ray Serve)",
                       description="Start the Ray Serve classification endpoint for a finished run directory: "
                                   "POST /v1/classify, GET /v1/classes, GET /healthz.")
    p.add_argument("--run", required=True, help="finished run directory (holds classifier/)")
    p.add_argument("--host", default=None, help="HTTP host (default: serve.host of the run's config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port, 8000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serve.* key, e.g. --set serve.max_batch_size=32")
    p.set_defaults(func=cmd_serve)
