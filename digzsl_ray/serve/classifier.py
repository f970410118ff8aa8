"""The model deployment: ``Classifier`` holds the served versions' models and batches requests
dynamically (``@serve.batch``). :class:`ModelHost` is the model itself; with
``serve.model_in_ingress`` the HTTP front holds one instead of calling this deployment."""

from __future__ import annotations

import numpy as np
from ray import serve


class ModelHost:
    """The models of the versions in use (at most ``KEEP``) and dynamic batching (``predict``)."""

    KEEP = 4

    def __init__(self, classifier_dir: str, max_batch_size: int, batch_wait_timeout_s: float, threads: int,
                 method: str = "", task: str = "single_label"):
        import torch

        from digzsl_ray.distributed.metrics import Metrics
        from digzsl_ray.models.presets import pick_device

        torch.set_num_threads(threads)
        self.device = pick_device("auto")
        self.multi_label = task == "multi_label"
        self.method = method
        self.models: dict = {}  # classifier folder -> model
        self._warm: set = set()
        self._model(classifier_dir)  # the run's own classifier, loaded before the replica takes requests
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches, self.images, self.largest = 0, 0, 0
        self.model_metrics = Metrics()

    def _model(self, classifier_dir: str):
        """The model of one version's classifier folder, loaded once. A frozen CLIP tower is shared
        by every version (only the head differs), so a new version costs its head."""
        m = self.models.get(classifier_dir)
        if m is not None:
            return m
        from digzsl_ray.serve.model import load_model

        shared = next((x for x in self.models.values() if getattr(x, "kind", "") == "clip"), None)
        m = load_model(classifier_dir, self.method, self.device, shared)
        if len(self.models) >= self.KEEP:  # the oldest version other than the first goes
            self.models.pop(next(k for k in list(self.models)[1:]))
        self.models[classifier_dir] = m
        return m

    def preload(self, classifier_dir: str) -> bool:
        self._model(classifier_dir)
        return True

    def ready(self, classifier_dir: str, size: int) -> bool:
        """The version's model loaded and one forward pass done (the first one pays for lazy
        initialisation): what ``/readyz`` waits for."""
        import torch

        if classifier_dir not in self._warm:
            with torch.no_grad():
                self._model(classifier_dir)(torch.zeros(1, 3, size, size, dtype=torch.uint8).to(self.device))
            self._warm.add(classifier_dir)
        return True

    def batch_stats(self) -> dict:
        """Batching counters of this replica (what dynamic batching achieved)."""
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest,
                "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0,
                "versions_loaded": len(self.models)}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict(self, images: list[np.ndarray], dirs: list[str]) -> list[np.ndarray]:
        from digzsl_ray.serve.model import probabilities

        self.batches += 1
        self.images += len(images)
        self.largest = max(self.largest, len(images))
        self.model_metrics.batch_size("classify", len(images))
        out: list = [None] * len(images)
        # a batch that spans an activation holds requests of two versions: one forward per version
        for d in dict.fromkeys(dirs):
            idx = [i for i, x in enumerate(dirs) if x == d]
            probs = probabilities(self._model(d), np.stack([images[i] for i in idx]), self.multi_label, self.device)
            for j, i in enumerate(idx):
                out[i] = probs[j]
        return out


@serve.deployment(name="Classifier")
class Classifier(ModelHost):
    """The model deployment (replicas, resources and autoscaling set by ``build_app``)."""


def classifier_options(sc: dict) -> dict:
    """The Classifier deployment's replicas and resources from the serve settings."""
    return {"max_ongoing_requests": max(32, 2 * sc["max_batch_size"]),
            "ray_actor_options": {"num_cpus": sc["num_cpus"], "num_gpus": sc["num_gpus"]},
            "autoscaling_config": {"min_replicas": sc["min_replicas"], "max_replicas": sc["max_replicas"],
                                   "target_ongoing_requests": sc["target_ongoing_requests"]}}
