"""The ``digzsl`` command line. Every command has ``--help``; long work shows progress bars.

Commands are thin: they parse arguments, load the typed config and call into the package. The
pipeline's stage subcommands come from the method's stage list (:mod:`digzsl_ray.cli.stages`).
Bad input (any :class:`digzsl_ray.errors.UserError`) is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from digzsl_ray.cli.common import (
    add_config_args,
    add_verbose_arg,
    guarded,
    load_run_config,
    setup_logging,
)


# ---------------------------------------------------------------------------------------------
# digzsl miniworld ...
def cmd_miniworld_make(args) -> int:
    from digzsl_ray.miniworld.make import PARTS, WorldParams, format_summary, make_world

    params = WorldParams(seed=args.seed)
    if args.corpus_size is not None:
        params.corpus_size = args.corpus_size
    parts = tuple(args.parts.split(",")) if args.parts else PARTS
    summary = make_world(args.out, params, progress=not args.quiet, parts=parts)
    print(format_summary(summary))
    print(f"wrote {args.out} (contact sheet: {Path(args.out) / 'contact_sheet.png'})")
    return 0


def cmd_pretrain(args) -> int:
    from digzsl_ray.config import PretrainConfig, load_config
    from digzsl_ray.distributed.cluster import init_ray
    from digzsl_ray.pretrain.job import run_pretrain

    cfg = load_config(args.config, args.overrides, PretrainConfig)
    setup_logging(args.verbose)
    # The dashboard is on as in pipeline runs: Ray Train's placement-group cleaner queries actor
    # state through it and otherwise logs a warning about every second.
    init_ray(num_cpus=max(cfg.cpus_per_worker * cfg.num_workers, os.cpu_count() or 1), dashboard=True)
    meta = run_pretrain(args.data, args.out, cfg)
    print(json.dumps({"out": str(args.out), "wall_seconds": meta["wall_seconds"],
                      "phases": {k: round(v["seconds"]) for k, v in meta["phases"].items()}}))
    return 0


def cmd_miniworld_oracle(args) -> int:
    from digzsl_ray.miniworld.oracle import train_oracle

    meta = train_oracle(args.out, seed=args.seed, steps=args.steps)
    print(json.dumps({k: meta[k] for k in ("held_out_acc", "train_seconds", "train_steps")}))
    return 0


def cmd_miniworld_check(args) -> int:
    from digzsl_ray.miniworld.check import format_check, run_check

    from digzsl_ray.errors import UserError
    from digzsl_ray.miniworld.check import run_figures, targets

    for name in ("evaluation.json", "metrics.json"):
        if args.run and not (Path(args.run) / name).is_file():
            raise UserError(f"--run: {Path(args.run) / name} is missing; run `make demo` (or `digzsl run`) first")
    result = run_check(assets=args.assets, world_dir=args.world, n_per_class=args.images_per_class,
                       progress=not args.quiet)
    if args.run:
        result["run"] = run_figures(args.run)
        result["targets"] = targets(result, result["run"])
    print(format_check(result))
    if args.json:
        from digzsl_ray.io import write_json

        write_json(args.json, result)
        print(f"saved {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------
# digzsl config / data
def cmd_config_show(args) -> int:
    from digzsl_ray.config import to_yaml

    print(to_yaml(load_run_config(args)), end="")
    return 0


def cmd_config_explain(args) -> int:
    from digzsl_ray.config import explain
    from digzsl_ray.methods import get_method, registered

    method = get_method(args.method)
    print(f"# method {method.name} (registered: {', '.join(registered())}): {method.description}")
    lines = explain(method.config)
    # the shared `method` key defaults to digzsl; under --method it is the method explained
    lines = [f"method = {method.name!r}" + ln[ln.index("  #"):] if ln.startswith("method = ") and "  #" in ln else ln
             for ln in lines]
    print("\n".join(lines))
    return 0


def cmd_data_check(args) -> int:
    from digzsl_ray.data import load_split

    cfg = load_run_config(args)
    split = load_split(cfg.data, out=args.out, validate=True)
    print(split.summary())
    if split.notes.get("test_images"):
        print(f"test images: {split.notes['test_images']}")
    if split.notes.get("ignored_files"):  # imagefolder: files it did not read as images
        first = ", ".join(ascii(p) for p in split.notes.get("ignored_examples", []))
        print(f"skipped {split.notes['ignored_files']} file(s) without an image extension or outside the class "
              f"folders, first: {first}")
    return 0


# ---------------------------------------------------------------------------------------------
# digzsl compare
def cmd_compare(args) -> int:
    from digzsl_ray.compare import format_table, write_compare

    result, written = write_compare(args.runs, args.out)
    print(format_table(result))
    for path in written:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digzsl",
        description="Zero-shot learning by generating training data for unseen classes, on Ray: DIG-ZSL "
                    "(`method: digzsl`, the default) and multi-label ZSL by diverse, tailored generation "
                    "(`method: multilabel`, e.g. --config miniworld_multilabel). Run the whole method with "
                    "`digzsl run --config C --out OUT`, or one stage at a time (the config's method picks the stage).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # miniworld
    mw = sub.add_parser("miniworld", help="render MiniWorld, train and check its foundation models",
                        description="MiniWorld: the project's own miniature world (docs/DESIGN.md section 6).")
    mws = mw.add_subparsers(dest="mw_command", required=True, metavar="SUBCOMMAND")
    p = mws.add_parser("make", help="render the corpus, the ZSL benchmark and the multi-label set",
                       description="Render MiniWorld into OUT (same seed, same bytes).")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--corpus-size", type=int, default=None, help="images in the captioned corpus (default 30000)")
    p.add_argument("--parts", default=None, help="comma-separated subset of corpus,zsl,multilabel (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_miniworld_make)

    add_pretrain_parser(mws, "pretrain", help_suffix=" (the same as `digzsl pretrain`)")

    p = mws.add_parser("train-oracle", help="train the measuring-stick oracle on fresh renders",
                       description="Train the MiniWorld oracle (never a training signal, only a measure).")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--steps", type=int, default=800, help="optimisation steps (batch 128)")
    p.set_defaults(func=cmd_miniworld_oracle)

    p = mws.add_parser("check", help="measure the shipped MiniWorld models through the real loaders",
                       description="Load the shipped CLIP, SD pipeline and oracle with the loaders that load real "
                                   "models, and print clip_zero_shot_top1 (+ per kind of class name, and among unseen classes), oracle_acc, sd_plain_prompt_oracle_acc, "
                                   "sd_rare/common/unseen_class_oracle_acc, vae_recon_oracle_acc(_min_attribute), "
                                   "sd_guidance_scale and sd_seconds_per_image (accuracies in percent), then every calibration "
                                   "target of docs/DESIGN.md section 6, met or missed.")
    p.add_argument("--json", default=None, help="also save the results to this JSON file")
    p.add_argument("--assets", default=None, help="model folder (default: the shipped digzsl_ray/assets/miniworld)")
    p.add_argument("--world", default=None, help="rendered world to read frequencies from (default: render metadata)")
    p.add_argument("--images-per-class", type=int, default=24, help="generated images per class (default 24)")
    p.add_argument("--run", default=None, help="a finished MiniWorld run directory (`make demo`: runs/miniworld); "
                                               "adds its calibration targets (no-synthetic ZSL and seen bias, "
                                               "pipeline minutes, peak memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_miniworld_check)

    # config
    cp = sub.add_parser("config", help="show or explain the typed config")
    cps = cp.add_subparsers(dest="cfg_command", required=True, metavar="SUBCOMMAND")
    p = cps.add_parser("show", help="print the fully resolved config", description="Print the resolved config as YAML.")
    add_config_args(p, out_required=None)
    p.set_defaults(func=cmd_config_show)
    p = cps.add_parser("explain", help="list every key with its default and meaning",
                       description="List every config key of a method's run config with its default and description.")
    p.add_argument("--method", default="digzsl", help="the method whose config to explain (default: digzsl)")
    p.set_defaults(func=cmd_config_explain)

    # data
    dp = sub.add_parser("data", help="dataset utilities")
    dps = dp.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dps.add_parser("check", help="load and validate the configured dataset",
                       description="Load the dataset of the config and run every validation (names, splits, images).")
    add_config_args(p, out_required=False)
    p.set_defaults(func=cmd_data_check)

    add_pretrain_parser(sub, "pretrain")
    from digzsl_ray.cli import stages

    stages.register(sub)

    # compare
    p = sub.add_parser("compare", help="compare finished runs side by side, mean ± std over seeds "
                                       "-> DIR/compare.json, DIR/compare.html",
                       description="Compare finished run directories of one class split: runs of one method whose "
                                   "configs differ only in seed-like keys (and the ray/serve sections) are one group, "
                                   "each run a seed; every group and ablation variant gets mean ± sample std of its "
                                   "metrics, wall time and peak memory. Writes DIR/compare.json and DIR/compare.html "
                                   "(docs/compare.md). Runs of different splits, or single- with multi-label runs, "
                                   "are refused.")
    p.add_argument("runs", nargs="+", metavar="OUT", help="finished run directories (`digzsl run --out OUT`)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created if missing)")
    p.set_defaults(func=cmd_compare)
    return parser


def add_pretrain_parser(sub, name: str, help_suffix: str = "") -> None:
    p = sub.add_parser(name, help="train a tiny CLIP and Stable Diffusion on any captioned image folder (Ray Train)"
                       + help_suffix,
                       description="Generic pretraining from any captioned image folder (metadata.jsonl + images; "
                                   "see docs/dataset-format.md). Writes OUT/sd (diffusers) and OUT/clip (open_clip). "
                                   "Rerunning with the same OUT resumes from the last checkpoint.")
    p.add_argument("--data", required=True, help="captioned image folder (MiniWorld: WORLD/corpus)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--config", "-c", default=None, help="YAML overrides of the pretraining config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pretraining key, e.g. --set sd_steps=100")
    add_verbose_arg(p)
    p.set_defaults(func=cmd_pretrain)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded("digzsl", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
