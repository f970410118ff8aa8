"""The run directory: paths, the resolved config, and the guard against mixing runs.

``OUT/run.json`` records the class list and the unseen classes the first time a stage runs; every
later stage (and every rerun) compares, so a run directory made for other classes is refused with
a clear message instead of being silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, to_yaml
from ..io import read_json, write_json, write_text


class RunDirError(ValueError):
    """A run directory that belongs to another run (other classes)."""


@dataclass
class RunDir:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root).resolve()

    # paths of the contract (DESIGN section 3)
    @property
    def config(self) -> Path: return self.root / "config.yaml"
    @property
    def run_json(self) -> Path: return self.root / "run.json"
    @property
    def prototypes(self) -> Path: return self.root / "prototypes.safetensors"
    @property
    def cdm(self) -> Path: return self.root / "cdm"
    @property
    def tokens(self) -> Path: return self.root / "tokens"
    @property
    def synthetic(self) -> Path: return self.root / "synthetic"
    @property
    def classifier(self) -> Path: return self.root / "classifier"
    @property
    def metrics(self) -> Path: return self.root / "metrics.json"
    @property
    def report(self) -> Path: return self.root / "report.html"
    @property
    def ray_storage(self) -> Path: return self.root / "ray"

    def bind(self, cfg: RunConfig, split) -> None:
        """Create the directory, refuse another run's directory, write config.yaml."""
        self.root.mkdir(parents=True, exist_ok=True)
        fp = {"dataset": split.name, **split.fingerprint()}
        if self.run_json.is_file():
            old = read_json(self.run_json)
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


def prepare(cfg: RunConfig, out: str | Path, progress: bool = True):
    """Load and validate the dataset, then bind the run directory. Returns ``(RunDir, ZSLSplit)``."""
    from ..data import load_split

    rd = RunDir(Path(out))
    split = load_split(cfg.data, out=rd.root, validate=True, progress=progress)
    rd.bind(cfg, split)
    return rd, split


def stage_timing(rd: RunDir, stage: str, seconds: float) -> None:
    """Record the wall time of a stage's most recent execution in OUT/timing.json (read into
    metrics.json). A stage skipped as complete keeps the time of the run that produced it."""
    path = rd.root / "timing.json"
    t = json.loads(path.read_text()) if path.is_file() else {}
    t[stage] = round(seconds, 2)
    write_json(path, t)


def fingerprint(*parts) -> str:
    """A short stable hash of what a stage's output depends on (settings and upstream outputs).

    Stored with the output; a stage whose stored fingerprint differs is redone instead of reused,
    and Ray Train run names carry it, so a changed setting never resumes an old run's checkpoint.
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else ""
