"""The ``Jobs`` deployment: the run directory's add-class job queue (docs/live.md), one job at a
time, resumed after a restart; the queue and its rules are :mod:`digzsl_ray.live.jobs` (Ray-free)."""

from __future__ import annotations

from ray import serve


def ray_free_cpus() -> tuple[float, float] | None:
    """(free CPUs, total CPUs) of the Ray cluster this replica runs on (the add-class watchdog's probe)."""
    try:
        import ray

        return float(ray.available_resources().get("CPU", 0.0)), float(ray.cluster_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - a probe, never a failure
        return None


@serve.deployment(name="Jobs", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Jobs:
    """Every call answers a dict: the job, or ``{"error", "refused": status}`` for the HTTP front."""

    def __init__(self, run_dir: str, queue_size: int, max_name_length: int):
        from digzsl_ray.distributed.metrics import Metrics
        from digzsl_ray.live.jobs import JobRunner
        from digzsl_ray.serve.rundir import add_class_fn, version_store

        self.versions = version_store(run_dir)
        fn, stages = add_class_fn(run_dir, self.versions)
        self.max_name_length = max_name_length
        self.runner = JobRunner(run_dir, fn, stages, lambda: self.versions.active()["classes"],
                                queue_size=queue_size, metrics=Metrics(), free_cpus=ray_free_cpus)

    @staticmethod
    def _answer(call, *args) -> dict | list:
        from digzsl_ray.live.jobs import JobError

        try:
            return call(*args)
        except JobError as e:
            return {"error": e.message, "refused": e.status}

    def submit(self, name) -> dict:
        from digzsl_ray.live.names import name_problem

        return self._answer(self.runner.submit, name, lambda n: name_problem(n, self.max_name_length))

    def get(self, job_id: str) -> dict:
        return self._answer(self.runner.store.get, job_id)

    def list(self) -> list:
        return self.runner.store.all()

    def cancel(self, job_id: str) -> dict:
        return self._answer(self.runner.cancel, job_id)
