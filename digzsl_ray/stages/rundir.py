"""The run directory: paths, the resolved config, and the guard against mixing runs.

``OUT/run.json`` records the class list and the unseen classes the first time a stage runs; every
later stage (and every rerun) compares, so a run directory made for other classes is refused with
a clear message instead of being silently mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digzsl_ray.config import to_yaml
from digzsl_ray.errors import MissingInputError, UserError
from digzsl_ray.io import read_json, write_json, write_text


class RunDirError(UserError):
    """A run directory that belongs to another run (other classes)."""


@dataclass
class RunDir:
    """A run directory: the files every method shares. A stage's own paths are declared by the
    stage (:attr:`digzsl_ray.stages.contract.Stage.writes`), not here."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root).resolve()

    @property
    def config(self) -> Path: return self.root / "config.yaml"
    @property
    def run_json(self) -> Path: return self.root / "run.json"
    @property
    def metrics(self) -> Path: return self.root / "metrics.json"
    @property
    def evaluation(self) -> Path: return self.root / "evaluation.json"
    @property
    def report(self) -> Path: return self.root / "report.html"
    @property
    def timing(self) -> Path: return self.root / "timing.json"
    @property
    def resources(self) -> Path: return self.root / "resources.json"
    @property
    def ray_storage(self) -> Path: return self.root / "ray"

    def bind(self, cfg, split) -> None:
        """Create the directory, refuse another run's directory, write config.yaml."""
        self.root.mkdir(parents=True, exist_ok=True)
        fp = {"dataset": split.name, "method": cfg.method, **split.fingerprint()}
        if self.run_json.is_file():
            old = read_json(self.run_json)
            if old.get("method", cfg.method) != cfg.method:
                raise RunDirError(f"run directory {self.root} holds a run of method {old['method']!r}, not "
                                  f"{cfg.method!r}; use a new --out for this method")
            if old.get("classes") != fp["classes"] or old.get("unseen") != fp["unseen"]:
                diff = _describe_difference(old, fp)
                raise RunDirError(
                    f"run directory {self.root} was made for a different dataset or class split ({diff}); "
                    f"refusing to mix them. Use a new --out, or delete {self.root} to start over.")
        else:
            write_json(self.run_json, fp)
        write_text(self.config, to_yaml(cfg))


def _describe_difference(old: dict, new: dict) -> str:
    if old.get("dataset") != new.get("dataset"):
        return f"dataset {old.get('dataset')!r} there, {new.get('dataset')!r} now"
    a, b = old.get("classes", []), new.get("classes", [])
    if a != b:
        only_old = [c for c in a if c not in set(b)][:3]
        only_new = [c for c in b if c not in set(a)][:3]
        return f"{len(a)} classes there, {len(b)} now; e.g. only there: {only_old}, only now: {only_new}"
    return f"unseen classes differ: {sorted(set(old.get('unseen', [])) ^ set(new.get('unseen', [])))[:5]}"


def prepare(cfg, out: str | Path, progress: bool = True, method=None):
    """Load and validate the dataset, then bind the run directory. Returns ``(RunDir, ZSLSplit)``.

    With ``method``, a split whose kind (single- or multi-label) the method does not take is a
    :class:`ConfigError` before anything is written.
    """
    from digzsl_ray.config import ConfigError
    from digzsl_ray.data import load_split

    rd = RunDir(Path(out))
    split = load_split(cfg.data, out=rd.root, validate=True, progress=progress)
    if method is not None and split.multi_label != method.multi_label:
        kind = "multi-label (label sets)" if split.multi_label else "single-label"
        raise ConfigError(f"data.format {cfg.data.format!r} gives {kind} data, which method {method.name!r} does "
                          f"not take; use a {'multi-label' if split.multi_label else 'single-label'} method")
    rd.bind(cfg, split)
    return rd, split


def stage_timing(rd: RunDir, stage: str, seconds: float) -> None:
    """Record the wall time of a stage's most recent execution in OUT/timing.json (read into
    metrics.json). A stage skipped as complete keeps the time of the run that produced it."""
    t = read_json(rd.timing) if rd.timing.is_file() else {}
    t[stage] = round(seconds, 2)
    write_json(rd.timing, t)


def record_resources(rd: RunDir, resources: dict) -> None:
    """Peak memory of a `digzsl run` invocation into OUT/resources.json; a resumed run keeps the
    largest peak of all its invocations."""
    old = read_json(rd.resources) if rd.resources.is_file() else {}
    if resources.get("peak_rss_mb", 0.0) < old.get("peak_rss_mb", 0.0):
        resources = {**old, "wall_s_this_invocation": resources.get("wall_s_this_invocation")}
    write_json(rd.resources, resources)


def write_metrics(rd: RunDir) -> dict:
    """The one writer of OUT/metrics.json: the evaluation's figures (OUT/evaluation.json), the stage
    times (OUT/timing.json) and the run's peak memory (OUT/resources.json), assembled from those
    files, so no caller can drop another's keys."""
    if not rd.evaluation.is_file():
        raise MissingInputError(f"{rd.evaluation}: missing; run `digzsl evaluate --out {rd.root}` first")
    metrics = dict(read_json(rd.evaluation)["metrics"])
    metrics["timing_s"] = read_json(rd.timing) if rd.timing.is_file() else {}
    res = read_json(rd.resources) if rd.resources.is_file() else {}
    metrics["peak_rss_mb"] = res.get("peak_rss_mb", 0.0)
    for key in ("peak_rss_sum_mb", "peak_memory_breakdown", "wall_s_this_invocation"):
        if key in res:
            metrics[key] = res[key]
    write_json(rd.metrics, metrics)
    return metrics
