"""The online classification endpoint, a live service (Ray Serve). ``digzsl_ray.serve:build_app`` is
the application the shipped Serve and KubeRay configs name.

* :mod:`.requests`: request parsing and answers (``k``, ``threshold``, images, calibrated top k,
  label sets), free of Ray: tested without a cluster;
* :mod:`.rundir`: what serving reads from a run directory (config, classes, versions, the
  method's add-class job);
* :mod:`.app`: ``build_app`` and the deployments (Ingress, Classifier, Jobs, Generator);
* :mod:`.local`: ``digzsl serve``'s blocking local runner.

Routes, limits and errors: docs/live.md and the README ("The endpoint").
"""

from digzsl_ray.serve.app import LIMIT_KEYS, OVERRIDABLE, build_app, make_generation
from digzsl_ray.serve.local import serve_blocking
from digzsl_ray.serve.requests import (
    RequestError,
    decode_image,
    jpeg_scans,
    multi_label_answer,
    parse_k,
    parse_threshold,
    top_k,
)
from digzsl_ray.serve.rundir import Scheduled, add_class_fn, load_run_meta, run_config, version_store

__all__ = ["LIMIT_KEYS", "OVERRIDABLE", "RequestError", "Scheduled", "add_class_fn", "build_app", "decode_image",
           "jpeg_scans", "load_run_meta", "make_generation", "multi_label_answer", "parse_k", "parse_threshold",
           "run_config", "serve_blocking", "top_k", "version_store"]
