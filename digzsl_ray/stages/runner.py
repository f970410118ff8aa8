"""``digzsl run``: every stage of the run's method in order, each skipped when its outputs are complete.

Wall time per stage goes to ``OUT/timing.json``; a sampler thread records the peak resident memory
of the whole process tree (driver, Ray's daemons and every worker; proportional set sizes, see
:class:`PeakRSS`) into ``OUT/resources.json``, and ``metrics.json`` is reassembled from both and
the evaluation (:func:`digzsl_ray.stages.rundir.write_metrics`, its one writer).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from digzsl_ray.stages.contract import Context, execute
from digzsl_ray.stages.rundir import (
    prepare,
    record_resources,
    stage_timing,
    write_metrics,
)

log = logging.getLogger("digzsl")


class PeakRSS:
    """Peak memory of this process and all its descendants, sampled every ``interval`` seconds.

    Each process counts its proportional set size (PSS: private pages plus its share of pages it
    shares with others), so the sum is the memory the process tree really occupies. Summing plain
    RSS would count libtorch's code pages and Ray's shared object store once per process (about
    20 Ray processes in a run), overstating the total by gigabytes. ``peak_mb`` is that sum at its
    maximum; ``breakdown`` lists the largest processes at that moment. ``peak_rss_sum_mb`` keeps
    the naive sum of RSS too (an upper bound), for comparison with tools that report it.
    """

    def __init__(self, interval: float = 1.0):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.interval, self.peak_mb, self.peak_rss_sum_mb, self.breakdown = interval, 0.0, 0.0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-memory")

    def sample(self) -> float:
        import psutil

        rows, rss = [], 0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                mem = p.memory_full_info()
                rows.append((getattr(mem, "pss", mem.rss), p.name()))
                rss += mem.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.peak_rss_sum_mb = max(self.peak_rss_sum_mb, rss / 2**20)
        mb = sum(r[0] for r in rows) / 2**20
        if mb > self.peak_mb:
            self.peak_mb = mb
            top = sorted(rows, reverse=True)[:8]
            self.breakdown = [{"process": name, "mb": round(b / 2**20, 1)} for b, name in top]
        return mb

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def context(cfg, method, out: str | Path, progress: bool = True, args=None) -> Context:
    """Load and validate the dataset, bind the run directory, and return the stages' context."""
    t0 = time.time()
    if getattr(method, "preflight", None) is not None:
        method.preflight(cfg)  # settings the models cannot take: a one-line config error before any work
    rd, split = prepare(cfg, out, progress=progress, method=method)
    stage_timing(rd, "data", time.time() - t0)
    return Context(cfg=cfg, rd=rd, split=split, method=method, progress=progress, args=args)


def run_pipeline(cfg, method, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) every stage of ``method``; returns metrics.json's content.

    With ``tracking.backend`` set, each stage's curves are logged once it is complete (ran or skipped),
    the final metrics and the artefacts at the end (:mod:`digzsl_ray.tracking`)."""
    from digzsl_ray.distributed.cluster import init_from_config
    from digzsl_ray.tracking import open_tracking

    t_all = time.time()
    tracking = open_tracking(cfg, out)  # an unreachable tracker is a UserError now, before any work
    try:
        with PeakRSS() as rss:
            ctx = context(cfg, method, out, progress=progress)
            ctx.state["pipeline"] = True
            tracking.begin(ctx)
            log.info("%s", ctx.split.summary())
            if any(s.needs_ray for s in method.stages):
                init_from_config(cfg.ray)
            for stage in method.stages:
                execute(stage, ctx)
                tracking.stage(stage, ctx)
            rss.sample()
        record_resources(ctx.rd, {"peak_rss_mb": round(rss.peak_mb, 1), "peak_memory_breakdown": rss.breakdown,
                                  "peak_rss_sum_mb": round(rss.peak_rss_sum_mb, 1),
                                  "wall_s_this_invocation": round(time.time() - t_all, 1)})
        metrics = write_metrics(ctx.rd)
        if method.report is not None:
            t0 = time.time()
            path = method.report(ctx)
            log.info("report: %s (%.1fs)", path, time.time() - t0)
    except BaseException as e:
        tracking.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracking.finish(ctx, metrics)
    return metrics
