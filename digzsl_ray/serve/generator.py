"""The ``Generator`` deployment: images of a served run's classes on request (``POST /v1/generate``),
batched across requests, drawn by the run's method (its ``generation`` hook: DIG-ZSL's Stable
Diffusion with the learned tokens). It scales from zero and gives its CPU back when idle
(``serve.generate_downscale_delay_s``), so an add-class job is not kept waiting for one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ray import serve


@serve.deployment(name="Generator")
class Generator:
    def __init__(self, run_dir: str, max_batch_size: int):
        from digzsl_ray.distributed.metrics import Metrics
        from digzsl_ray.methods import get_method
        from digzsl_ray.serve.rundir import run_config

        cfg = run_config(Path(run_dir))
        self.generation = get_method(cfg.method).generation(cfg)
        self.generate.set_max_batch_size(max_batch_size)
        self.metrics = Metrics()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, requests: list[dict]) -> list[list[bytes]]:
        self.metrics.batch_size("generate", sum(r["n"] for r in requests))
        return await asyncio.to_thread(self.generation, requests)


def generator_options(sc: dict) -> dict:
    """The Generator deployment's queue, resources and autoscaling from the serve settings."""
    return {"max_ongoing_requests": max(2, sc["generate_max_batch_size"]),
            "max_queued_requests": sc["generate_max_queued"],
            "ray_actor_options": {"num_cpus": sc["generate_num_cpus"], "num_gpus": sc["generate_num_gpus"]},
            "autoscaling_config": {"min_replicas": sc["generate_min_replicas"],
                                   "initial_replicas": sc["generate_min_replicas"],
                                   "max_replicas": sc["generate_max_replicas"], "target_ongoing_requests": 2,
                                   "downscale_delay_s": sc["generate_downscale_delay_s"]}}
