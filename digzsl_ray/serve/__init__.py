"""The online classification endpoint, a live service (Ray Serve). ``digzsl_ray.serve:build_app`` is
the application the shipped Serve and KubeRay configs name.

* :mod:`.requests`: request parsing and answers (``k``, ``threshold``, images, calibrated top k,
  label sets), free of Ray: tested without a cluster;
* :mod:`.rundir`: what serving reads from a run directory (config, classes, versions, the
  method's add-class job);
* :mod:`.settings`: the serve settings of an application (the run's ``serve`` config and overrides);
* :mod:`.app`: ``build_app``, composing the deployments: :mod:`.front` (``Ingress``, the HTTP front),
  :mod:`.classifier` (``Classifier``), :mod:`.jobs` (``Jobs``), :mod:`.generator` (``Generator``).

``digzsl serve`` (a blocking local runner) is :mod:`digzsl_ray.cli.serve`.

Routes, limits and errors: docs/live.md and the README ("The endpoint").
"""

from digzsl_ray.serve.app import build_app
from digzsl_ray.serve.requests import (
    RequestError,
    decode_image,
    jpeg_scans,
    multi_label_answer,
    parse_k,
    parse_threshold,
    top_k,
)
from digzsl_ray.serve.rundir import ActiveVersion, add_class_fn, load_run_meta, run_config, version_store
from digzsl_ray.serve.settings import LIMIT_KEYS, OVERRIDABLE

__all__ = ["LIMIT_KEYS", "OVERRIDABLE", "ActiveVersion", "RequestError", "add_class_fn", "build_app", "decode_image",
           "jpeg_scans", "load_run_meta", "multi_label_answer", "parse_k", "parse_threshold",
           "run_config", "top_k", "version_store"]
