"""The service's own Prometheus metrics, through Ray's metrics API (:mod:`ray.util.metrics`).

Ray exports them with Ray Serve's built-in ``ray_serve_*`` metrics on every node's metrics port
(``ray start --metrics-export-port``), prefixed ``ray_``; docs/live.md has a sample scrape.

* ``digzsl_requests_total{route, status}``        requests answered, by route and HTTP status
* ``digzsl_batch_size{deployment}``               images per model batch (classify, generate)
* ``digzsl_job_stage_seconds{stage}``             wall time of each add-class job stage
* ``digzsl_jobs_total{status}``                   add-class jobs ended (succeeded, rejected, failed)
* ``digzsl_active_model_version{version}``        1 for the version a replica answers with, else 0

``ray.util.metrics`` rather than ``ray.serve.metrics``: the add-class job records its stage times
from a background thread, outside any request context that Serve's wrapper reads its tags from.
Outside a Ray worker (``digzsl add-class`` offline, unit tests) every call is a no-op.
"""

from __future__ import annotations

import logging

log = logging.getLogger("digzsl")

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
STAGE_BOUNDARIES = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600]


class _Null:
    def inc(self, *a, **k):
        pass

    def observe(self, *a, **k):
        pass

    def set(self, *a, **k):
        pass


class Metrics:
    """One process's handles on the metrics (created lazily; never raises)."""

    def __init__(self):
        self.requests = self.batch = self.stage = self.jobs = self.active = _Null()
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Gauge, Histogram

            self.requests = Counter("digzsl_requests_total", description="requests answered, by route and status",
                                    tag_keys=("route", "status"))
            self.batch = Histogram("digzsl_batch_size", description="images per model batch",
                                   boundaries=BATCH_BOUNDARIES, tag_keys=("deployment",))
            self.stage = Histogram("digzsl_job_stage_seconds", description="wall time of add-class job stages",
                                   boundaries=STAGE_BOUNDARIES, tag_keys=("stage",))
            self.jobs = Counter("digzsl_jobs_total", description="add-class jobs ended, by status",
                                tag_keys=("status",))
            self.active = Gauge("digzsl_active_model_version", description="1 for the served model version",
                                tag_keys=("version",))
        except Exception as e:  # metrics must never take the service down
            log.debug("metrics unavailable: %s", e)

    def request(self, route: str, status: int) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})

    def batch_size(self, deployment: str, n: int) -> None:
        self.batch.observe(n, tags={"deployment": deployment})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self.stage.observe(seconds, tags={"stage": stage})

    def job_ended(self, status: str) -> None:
        self.jobs.inc(1, tags={"status": status})

    def version(self, new: str, old: str | None = None) -> None:
        if old and old != new:
            self.active.set(0, tags={"version": old})
        self.active.set(1, tags={"version": new})
