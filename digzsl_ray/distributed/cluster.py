"""Connecting to Ray: a given address, ``RAY_ADDRESS``, or a local cluster sized for this machine.

A local cluster starts with the dashboard off and a temporary directory of its own. Logical CPUs
may exceed physical cores on purpose (docs/DESIGN.md section 7): a Ray Data actor pool feeding a trainer
otherwise starves on a 2-core machine; torch threads are pinned per actor instead.
"""

from __future__ import annotations

import logging
import os


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(address: str = "", num_cpus: int = 0, dashboard: bool = False, **kwargs) -> None:
    """Idempotent ``ray.init``: join ``address`` or ``RAY_ADDRESS``, else start a local cluster.

    ``dashboard``: start the Ray dashboard of a local cluster on 127.0.0.1 (a free port, logged).
    Pipeline runs turn it on: besides letting you watch the run, Ray Train 2.60's placement-group
    cleaner queries actor state through it and warns every few seconds when it is missing.
    """
    import digzsl_ray.logs as logs

    logs.quiet_logging()  # before ray's first import: it reads RAY_DEDUP_LOGS_SKIP_REGEX then
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    # workers of a local cluster filter their logs as the driver does (docs: --verbose)
    env = logs.worker_runtime_env({"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
                                   "TOKENIZERS_PARALLELISM": "false"})
    level = logging.INFO if logs.verbose() else logging.WARNING
    if address:
        ray.init(address=address, runtime_env=kwargs.pop("runtime_env", None), logging_level=level, **kwargs)
        return
    if dashboard:
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        kwargs.setdefault("dashboard_port", free_port())
    ctx = ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=dashboard,
        logging_level=level,
        runtime_env=kwargs.pop("runtime_env", env),
        **kwargs,
    )
    if dashboard and getattr(ctx, "dashboard_url", None):
        logging.getLogger("digzsl").info("Ray dashboard: http://%s", ctx.dashboard_url)


def init_from_config(ray_cfg) -> None:
    init_ray(address=ray_cfg.address, num_cpus=ray_cfg.num_cpus, dashboard=ray_cfg.dashboard)
    quiet_data_progress()


def quiet_data_progress() -> None:
    """Our stages draw their own progress bars; Ray Data's per-operator bars and periodic progress
    log lines would repeat them in every worker's log. With ``--verbose`` Ray Data logs at INFO."""
    import ray.data

    import digzsl_ray.logs as logs

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.INFO if logs.verbose() else logging.WARNING)


def quiet_train_worker_logs() -> None:
    """Ray Train V2 logs every report and checkpoint at INFO from each worker; keep warnings only.

    Called on the first line of our train workers; our own progress bars and stage logs say the same.
    """
    import importlib

    import digzsl_ray.logs as logs

    if logs.verbose():
        return
    logs.quiet_logging()  # ray.train (and ray.data, ray.tune) at WARNING, among the rest
    try:  # this module's logger is named by its file path
        ctx = importlib.import_module("ray.train.v2._internal.execution.context")
        logging.getLogger(ctx.__file__).setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass
