"""``digzsl run``: every stage in order, each skipped when its outputs are complete.

prototypes -> CDM (Ray Train) -> tokens (actor pool) -> generation (Ray Data) -> classifiers
(Ray Train; DCT and plain-prompt ablation) -> evaluation -> report. Wall time per stage goes to
``OUT/timing.json``; a sampler thread records the peak resident memory of the whole process tree
(driver, Ray's daemons and every worker; proportional set sizes, see :class:`PeakRSS`) into
``metrics.json`` as ``peak_rss_mb``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..io import read_json, write_json
from .common import prepare, stage_timing

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


def run_pipeline(cfg, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the whole method; returns metrics.json's content."""
    from ..raycluster import init_from_config
    from .cdm import run_cdm
    from .classifier import run_classifier
    from .evaluate import run_evaluate
    from .generate import run_generate, variants
    from .prototypes import run_prototypes
    from .report import build_report
    from .tokens import run_tokens

    t_all = time.time()
    with PeakRSS() as rss:
        t0 = time.time()
        rd, split = prepare(cfg, out, progress=progress)
        stage_timing(rd, "data", time.time() - t0)
        log.info("%s", split.summary())
        init_from_config(cfg.ray)
        run_prototypes(cfg, rd, split)
        run_cdm(cfg, rd, split)
        run_tokens(cfg, rd, split, progress=progress)
        run_generate(cfg, rd, split, progress=progress)
        for variant in variants(cfg):
            run_classifier(cfg, rd, split, variant, progress=progress)
        t0 = time.time()
        metrics = run_evaluate(cfg, rd, split)
        stage_timing(rd, "evaluate", time.time() - t0)
        rss.sample()
    # a resumed run keeps the largest peak of all its invocations
    if rss.peak_mb >= (metrics.get("peak_rss_mb") or 0.0):
        metrics["peak_rss_mb"] = round(rss.peak_mb, 1)
        metrics["peak_memory_breakdown"] = rss.breakdown
        metrics["peak_rss_sum_mb"] = round(rss.peak_rss_sum_mb, 1)
    metrics["timing_s"] = read_json(rd.root / "timing.json")
    metrics["wall_s_this_invocation"] = round(time.time() - t_all, 1)
    write_json(rd.metrics, metrics)
    t0 = time.time()
    build_report(cfg, rd, split)
    log.info("report: %s (%.1fs)", rd.report, time.time() - t0)
    return metrics
