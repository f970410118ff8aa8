"""What serving reads from a run directory: its resolved config, the served classifier's classes
and calibration, the model versions (``models/``) and the active one, and the method's add-class
job. Ray-free."""

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger("digzsl")


def run_config(run_dir: Path, overrides: list[str] | None = None):
    """The run directory's resolved config (config.yaml) with its method's config class."""
    from digzsl_ray.methods import load_run_config

    cfg_path = Path(run_dir) / "config.yaml"
    return load_run_config(cfg_path if cfg_path.is_file() else None, overrides)


def load_run_meta(run_dir: str | Path) -> dict:
    """What serving needs from a run directory: serve config, classes, lambda, model version."""
    from digzsl_ray.errors import MissingInputError
    from digzsl_ray.methods import get_method

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    method = get_method(cfg.method)
    cdir = method.output(run_dir, method.serve_ref(cfg))
    for f in ("weights.safetensors", "config.json", "classes.json"):
        if not (cdir / f).is_file():
            raise MissingInputError(f"{cdir / f}: missing; serve needs a finished run directory (digzsl run)")
    try:
        classes = json.loads((cdir / "classes.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        names, seen, unseen = classes["classes"], classes["seen"], classes["unseen"]
        lam = float(metrics.get("calibration_lambda", 0.0))
        task = str(metrics.get("task", "single_label"))
        threshold = float(metrics.get("threshold", 0.5))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MissingInputError(f"{run_dir}: classifier/classes.json or metrics.json is damaged "
                                f"({type(e).__name__}: {str(e)[:120]}); rerun `digzsl evaluate` or `digzsl run`") from None
    digest = hashlib.sha256((cdir / "weights.safetensors").read_bytes()).hexdigest()[:12]
    return {"serve": cfg.serve.model_dump(), "classes": names, "seen": seen, "unseen": unseen, "lambda": lam,
            "model_version": f"{cfg.name}-{digest}", "classifier_dir": str(cdir), "task": task,
            "threshold": threshold, "method": cfg.method,
            "tokens": method.tokens(run_dir) if method.tokens is not None else {}}


def version_store(run_dir: str | Path, meta: dict | None = None):
    """The run's :class:`~digzsl_ray.live.versions.VersionStore` (version 0: its own classifier)."""
    from digzsl_ray.live.versions import VersionStore, base_from_meta

    return VersionStore(run_dir, base_from_meta(run_dir, meta or load_run_meta(run_dir)))


def add_class_fn(run_dir: str | Path, versions=None, overrides: list[str] | None = None):
    """``(run_dir, job_dir, name, reporter) -> result`` for the run's method, with the run config
    (plus ``overrides``, ``key=value``), its data split and version store bound; ``(None, ())``
    when the method cannot add classes."""
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import get_method

    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    method = get_method(cfg.method)
    if method.add_class is None:
        return None, ()
    versions = versions or version_store(run_dir)
    cache: dict = {}

    def run(run_dir_, job_dir, name, rep):
        if "split" not in cache:  # read once per process, when the first job runs
            cache["split"] = load_split(cfg.data, run_dir, validate=False, progress=False)
        return method.add_class(Path(run_dir_), Path(job_dir), name, rep, versions, cfg, cache["split"])

    return run, tuple(method.add_class_stages)


class ActiveVersion:
    """The served version's metadata, read again from ``models/active.json`` when that file changes
    (checked by a stat call at most every ``interval`` seconds): every ingress replica follows an
    activation within that time."""

    def __init__(self, versions, interval: float = 0.2):
        import time

        from digzsl_ray.live.versions import serving_meta

        self.versions, self.interval, self._serving = versions, interval, serving_meta
        self._clock = time.monotonic
        self._checked, self._stamp = 0.0, None
        try:
            self.meta = serving_meta(versions.active())
        except Exception as e:  # a damaged active.json at start: say so, answer with version 0 meanwhile
            log.error("model versions: cannot read the active version (%s); serving version %s until it is "
                      "repaired", e, versions.base["id"])
            self.meta = serving_meta(versions.base)

    def refresh_now(self) -> None:
        """Check ``active.json`` at the next :meth:`current` (this replica made the activation)."""
        self._checked = 0.0

    def current(self) -> dict:
        now = self._clock()
        if now - self._checked < self.interval:
            return self.meta
        self._checked = now
        try:
            st = self.versions.active_path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.meta = self._serving(self.versions.active())
            except Exception as e:  # a damaged active.json must not take the service down: keep answering
                log.error("model versions: cannot read the active version (%s); still serving %s", e,
                          self.meta["model_version"])
        return self.meta
