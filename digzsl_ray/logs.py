"""Quiet logs by default: third-party chatter filtered at its source, per logger, in every process.

What a default run hides (``--verbose``, or ``DIGZSL_VERBOSE=1``, shows all of it):

* INFO lines of the libraries the pipeline drives: open_clip's dozen lines per CLIP load (logged on
  the root logger from open_clip's modules: only those records are dropped), Ray Train's controller
  and worker-group lines (``ray.train``, through Ray Train's own ``LoggingConfig``) and Ray Data's
  (``ray.data``);
* warnings known to be harmless, each named by its logger and message in :data:`HARMLESS`;
* Ray core's "constructor arguments in the object store" line forwarded from Ray Train's controller
  (Ray Train's and Ray Data's own actors take object refs), through Ray's
  ``RAY_DEDUP_LOGS_SKIP_REGEX``;
* progress bars drawn inside Ray workers (``TQDM_DISABLE=1`` in the workers' environment): each long
  step keeps the one bar the driver draws.

Warnings and errors of every other kind, from every logger, still print. The driver applies this
in :func:`digzsl_ray.cli.common.setup_logging`; Ray workers of a local cluster through
``runtime_env={"worker_process_setup_hook": ...}`` (:func:`worker_runtime_env`).
"""

from __future__ import annotations

import logging
import os
import re

VERBOSE_ENV = "DIGZSL_VERBOSE"

# (logger, message pattern): warnings that say nothing a user of this project can act on.
HARMLESS: tuple[tuple[str, str], ...] = (
    # a local cluster started by ray.init(): the token is generated and used for us
    ("ray._private.authentication.authentication_token_setup", r"^Token authentication is enabled for this Ray"),
    # we turn Ray Data's bars off on purpose (our stages draw their own)
    ("ray.data._internal.progress", r"^Progress bars disabled"),
    # adding a learned token to CLIP's vocabulary: its embedding is set right after the resize
    ("transformers.modeling_utils", r"^The new embeddings will be initialized from a multivariate normal"),
)

# INFO chatter: these loggers print warnings and errors only.
CHATTY: tuple[str, ...] = ("ray.data", "ray.train", "ray.tune")

# Lines of Ray worker processes that the driver's log monitor would reprint; no Python logger sees
# them (Ray core's C++ log).
SKIP_FORWARDED = r"has constructor arguments in the object store and max_restarts > 0"

_TAG = "_digzsl_quiet"


def verbose() -> bool:
    """``--verbose`` was given (or ``DIGZSL_VERBOSE=1`` is set): nothing is filtered."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(flag: bool) -> None:
    """Record ``--verbose`` in the environment, where Ray workers started after it read it too."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.pattern.search(record.getMessage())
        except Exception:  # a record whose arguments do not format: let logging report it
            return True


class _DropOpenClipInfo(logging.Filter):
    """open_clip logs with ``logging.info(...)``: records of the root logger from open_clip's files."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return "/open_clip/" not in path


def _add_once(logger: logging.Logger, flt: logging.Filter) -> None:
    key = (type(flt).__name__, getattr(getattr(flt, "pattern", None), "pattern", None))
    if any(getattr(f, _TAG, None) == key for f in logger.filters):
        return
    setattr(flt, _TAG, key)
    logger.addFilter(flt)


def quiet_open_clip() -> None:
    """Drop open_clip's INFO records in this process (unless verbose); idempotent."""
    if not verbose():
        _add_once(logging.getLogger(), _DropOpenClipInfo())


def quiet_logging() -> None:
    """Apply the filters of this module to this process (nothing when verbose); idempotent."""
    if verbose():
        return
    quiet_open_clip()
    for name in CHATTY:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name, pattern in HARMLESS:
        _add_once(logging.getLogger(name), _DropMessages(pattern))
    # read when ray is first imported; a value the user set wins
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", SKIP_FORWARDED)


def setup_worker_logging() -> None:
    """Ray's ``worker_process_setup_hook``: runs in every worker process before its first task."""
    quiet_logging()


def worker_runtime_env(env_vars: dict) -> dict:
    """A runtime_env for a local cluster: ``env_vars`` plus the verbose switch or the quiet setup."""
    env = dict(env_vars)
    if verbose():
        env[VERBOSE_ENV] = "1"
        return {"env_vars": env}
    env.setdefault("TQDM_DISABLE", "1")
    return {"env_vars": env, "worker_process_setup_hook": "digzsl_ray.logs.setup_worker_logging"}


def bars(progress: bool) -> bool:
    """``progress``, unless ``TQDM_DISABLE`` is set (quiet Ray workers): tqdm lets an explicit
    ``disable=False`` override that variable, and a bar drawn in a worker reaches the driver as one
    garbled line per update batch."""
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false")


def train_log_level() -> str:
    """Ray Train's console level (its ``LoggingConfig``): INFO only when verbose."""
    return "INFO" if verbose() else "WARNING"
