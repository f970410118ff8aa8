"""What every ``digzsl`` command and ``jobs/`` entry point shares: the config arguments, logging,
and the one way a user mistake is reported (one line on stderr, exit code 2, no traceback)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from digzsl_ray.errors import EXIT_USER_ERROR, UserError, one_line


def add_config_args(p: argparse.ArgumentParser, out_required: bool | None = True) -> None:
    """``--config``, repeatable ``--set``, and (unless ``out_required`` is None) ``--out``."""
    from digzsl_ray.config import shipped_configs

    p.add_argument("--config", "-c", default=None,
                   help=f"YAML file of overrides, or a shipped config name ({', '.join(shipped_configs())}); "
                        "default: the built-in MiniWorld settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set cdm.epochs=5 (repeatable; values parsed as YAML)")
    if out_required is not None:
        p.add_argument("--out", "-o", required=out_required, help="run directory (created if missing)")


def load_run_config(args):
    """The run config named by ``--config`` / ``--set`` (with its method's config class)."""
    from digzsl_ray.methods import load_run_config as load

    return load(args.config, args.overrides)


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print every library's log lines, in every Ray worker too (open_clip, Ray Train and Ray "
                        "Data INFO lines, known-harmless warnings, workers' progress bars); default: filtered "
                        "(docs/logging.md). Same as DIGZSL_VERBOSE=1")


def setup_logging(verbose: bool = False) -> None:
    """INFO lines of this project on stderr; third-party chatter filtered per logger unless ``verbose``
    (``--verbose``) or ``DIGZSL_VERBOSE=1`` (:mod:`digzsl_ray.logs`)."""
    import digzsl_ray.logs as logs

    logs.set_verbose(verbose)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logs.quiet_logging()


def report_user_error(prog: str, e: BaseException) -> int:
    """One line on stderr naming what is wrong (bounded in length), exit code 2."""
    text = one_line(str(e))
    if len(text) > 2000:
        text = text[:1970] + f"... ({len(text)} chars)"
    print(f"{prog}: error: {text}", file=sys.stderr)
    return EXIT_USER_ERROR


def guarded(prog: str, func: Callable[[], int | None]) -> int:
    """Run ``func``; a :class:`UserError` becomes one line and exit code 2, anything else propagates."""
    try:
        return int(func() or 0)
    except UserError as e:
        return report_user_error(prog, e)


