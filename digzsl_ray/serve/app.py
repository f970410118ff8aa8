"""``build_app(args)``: the Serve application of a finished run directory, composed of its
deployments (each in its own module):

* :mod:`.front`: ``Ingress``, the HTTP front (FastAPI): every route, one guard, body limits;
* :mod:`.classifier`: ``Classifier``, the model with dynamic request batching (with
  ``serve.model_in_ingress`` the front holds the model itself instead);
* :mod:`.jobs`: ``Jobs``, the add-class job queue of the run directory (methods that can add classes);
* :mod:`.generator`: ``Generator``, images on request through the method's ``generation`` hook;
  scales from zero.

Routes of the classifier:

* ``POST /v1/classify``: multipart form field ``image`` (optional field/query ``k``), or JSON
  ``{"image_base64": "...", "k": 5}``; answers ``{"predictions": [{"class", "score", "seen",
  "probability"}], "model_version"}``: the top k classes under GZSL calibrated stacking (``score`` =
  softmax probability minus the run's calibration lambda for seen classes, the ranking used by
  the evaluation). A multi-label run (``method: multilabel``) answers ``{"task": "multi_label",
  "labels": [...], "predictions": [...], "threshold", "model_version"}``: ``labels`` are every label
  whose probability exceeds the threshold chosen on validation data (``threshold`` in the JSON,
  form or query overrides it, strictly between 0 and 1), ``predictions`` the top k by probability.
* ``GET /v1/classes``: class names with a seen flag; ``GET /healthz``; ``GET /readyz``; ``GET
  /v1/stats``: the batching counters of one Classifier replica.

The live routes (``POST /v1/classes``, ``GET``/``DELETE /v1/jobs/{id}``, ``GET /v1/models``, ``POST
/v1/models/{id}/activate``, ``POST /v1/generate``), model versions, access control and metrics are
described in docs/live.md. Every user mistake is a 4xx JSON ``{"error": "..."}``; a model replica lost
mid-request gives a retryable 503. The classifier is loaded with safetensors and JSON only.

``args`` (from ``serve run``/``serve deploy`` or ``digzsl serve``): ``run_dir`` (required) and
optional overrides of the run's ``serve`` config (:data:`.settings.OVERRIDABLE`).
"""

import json
from pathlib import Path

from digzsl_ray.serve.settings import LIMIT_KEYS, OVERRIDABLE, app_settings, shutdown_options

__all__ = ["LIMIT_KEYS", "OVERRIDABLE", "build_app"]


def build_app(args: dict):
    """The Serve application for ``args["run_dir"]`` (see module docstring)."""
    from digzsl_ray.live.auth import token_digest
    from digzsl_ray.methods import get_method
    from digzsl_ray.serve.classifier import Classifier, classifier_options
    from digzsl_ray.serve.front import Ingress, ingress_options
    from digzsl_ray.serve.generator import Generator, generator_options
    from digzsl_ray.serve.jobs import Jobs
    from digzsl_ray.serve.rundir import run_config

    meta, sc = app_settings(args)
    run_dir = str(Path(args["run_dir"]).resolve())
    cfg = run_config(Path(run_dir))
    method = get_method(meta["method"])
    stop = shutdown_options(sc)  # every replica stops within serve.graceful_shutdown_s
    image_size = int(json.loads(Path(meta["classifier_dir"], "config.json").read_text())["image_size"])

    # the model: its own deployment, or held by every front replica (serve.model_in_ingress)
    model_args = (meta["classifier_dir"], sc["max_batch_size"], sc["batch_wait_timeout_s"],
                  max(1, int(sc["num_cpus"])), meta["method"], meta["task"])
    in_front = bool(sc["model_in_ingress"])
    classifier = None if in_front else Classifier.options(**classifier_options(sc), **stop).bind(*model_args)

    # the live service: add-class jobs and generation, where the method offers them
    jobs = None
    if method.add_class is not None:
        jobs = Jobs.options(**stop).bind(run_dir, cfg.live.queue_size, cfg.live.max_name_length)
    generator = None
    if method.generation is not None:
        generator = Generator.options(**generator_options(sc), **stop).bind(run_dir, sc["generate_max_batch_size"])

    limits = {k: sc[k] for k in LIMIT_KEYS}
    access = {"digest": token_digest(sc.get("api_token_file", "")), "protect_classify": sc["protect_classify"],
              "generate_max_n": sc.get("generate_max_n", 0), "method": meta["method"], "docs": bool(sc["docs"])}
    return Ingress.options(**ingress_options(sc), **stop).bind(classifier, run_dir, limits, image_size, access, jobs,
                                                       generator, model_args if in_front else None)
