"""The Python API (re-exported by :mod:`digzsl_ray`): run a config, open a finished run, classify
images with a run's served model and generate images of a class, without the command line and
without Ray Serve. Torch and Ray are imported only by the functions that need them.

    import digzsl_ray as dz
    run = dz.run("miniworld", "runs/miniworld", overrides=["seed=1"])   # the stages of `digzsl run`
    run = dz.open_run("runs/miniworld")
    run.metrics["zsl_top1"], run.ablation["dct"]["gzsl_H"], run.report
    clf = dz.Classifier(run)                      # the active model version, loaded once
    clf(["a.png", pil_image, uint8_array], k=3)   # the answers of POST /v1/classify, one per image
    dz.generate(run, "striped red circle", n=4)  # PIL images (DIG-ZSL runs: the class's learned token)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """A run directory as the API reads it (nothing is loaded lazily except the model)."""

    path: Path
    config: dict  # the resolved config (config.yaml)
    method: str
    metrics: dict  # metrics.json ({} while the run is unfinished)
    artefacts: dict[str, Path] = field(default_factory=dict)  # "stage:output" -> path, those on disk

    @property
    def ablation(self) -> dict[str, dict]:
        """Every variant's figures (metrics.json ``ablation``), the floor ``clip_zero_shot`` included."""
        return dict(self.metrics.get("ablation", {}))

    @property
    def report(self) -> Path | None:
        p = self.path / "report.html"
        return p if p.is_file() else None


def open_run(path: str | Path) -> Run:
    """A finished (or partial) run directory: its resolved config, metrics.json and the outputs of its
    method's stages that exist."""
    import yaml

    from digzsl_ray.errors import MissingInputError
    from digzsl_ray.methods import get_method

    root = Path(path)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise MissingInputError(f"{cfg_path}: missing; not a run directory (digzsl run --out {root})")
    config = yaml.safe_load(cfg_path.read_text()) or {}
    method = str(config.get("method", "digzsl"))
    m = get_method(method)
    arts = {}
    for stage in m.stages:
        for out, rel in stage.writes.items():
            if (root / rel).exists():
                arts[f"{stage.name}:{out}"] = root / rel
    metrics = json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").is_file() else {}
    return Run(root, config, method, metrics, arts)


def run(config: str | Path | None = None, out: str | Path = "runs/run", overrides: list[str] | tuple = (),
        progress: bool = True) -> Run:
    """``digzsl run --config CONFIG --out OUT --set ...``: every stage of the config's method, complete
    ones skipped (a rerun resumes); returns the finished run."""
    from digzsl_ray.methods import get_method, load_run_config
    from digzsl_ray.stages.runner import run_pipeline

    cfg = load_run_config(config, list(overrides))
    run_pipeline(cfg, get_method(cfg.method), out, progress=progress)
    return open_run(out)


def _as_bytes(image: Any) -> bytes:
    """Image file bytes of a path, raw bytes, a PIL image or an ``[H, W(, C)]`` uint8 array (PNG)."""
    import numpy as np

    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"an image is a path, bytes, a PIL image or a uint8 array, not {type(image).__name__}")


class Classifier:
    """The run's active model version in this process: ``clf(images, k=..., threshold=...)`` gives the
    answers ``POST /v1/classify`` gives (the same decoding, model, calibration and ranking)."""

    def __init__(self, run_: Run | str | Path, device: str = "cpu"):
        from digzsl_ray.live.versions import serving_meta
        from digzsl_ray.serve.model import load_model
        from digzsl_ray.serve.rundir import load_run_meta, version_store

        self.run = run_ if isinstance(run_, Run) else open_run(run_)
        base = load_run_meta(self.run.path)
        self.meta = serving_meta(version_store(self.run.path, base).active())
        self.limits = base["serve"]
        self.device = device
        self.model = load_model(self.meta["classifier_dir"], base["method"], device)
        cfg = json.loads(Path(self.meta["classifier_dir"], "config.json").read_text())
        self.size = int(cfg["image_size"])

    def __call__(self, images, k: int | None = None, threshold: float | None = None) -> list[dict]:
        import numpy as np

        from digzsl_ray.serve.model import probabilities
        from digzsl_ray.serve.requests import decode_image, multi_label_answer, parse_k, parse_threshold, top_k

        one = not isinstance(images, (list, tuple))
        items = [images] if one else list(images)
        meta = self.meta
        k = parse_k(k, self.limits["default_k"], len(meta["classes"]))
        multi = meta["task"] == "multi_label"
        if multi:
            threshold = parse_threshold(threshold, meta["threshold"])
        x = np.stack([decode_image(_as_bytes(im), self.size, self.limits["max_pixels"], self.limits["max_jpeg_scans"])
                      for im in items])
        probs = probabilities(self.model, x, multi, self.device)
        seen = set(meta["seen"])
        out = []
        for p in probs:
            if multi:
                out.append({"task": "multi_label", **multi_label_answer(p, meta["classes"], seen, threshold, k),
                            "model_version": meta["model_version"]})
            else:
                out.append({"predictions": top_k(p, meta["classes"], seen, meta["lambda"], k),
                            "model_version": meta["model_version"]})
        return out[0] if one else out


def classify(run_: Run | str | Path, images, k: int | None = None, threshold: float | None = None):
    """One call of :class:`Classifier` (loads the model each time: keep a ``Classifier`` for many calls)."""
    return Classifier(run_)(images, k=k, threshold=threshold)


def generate(run_: Run | str | Path, class_name: str, n: int = 1, seed: int = 0) -> list:
    """``n`` PIL images of ``class_name`` with the active version's learned token (seeds ``seed`` ..
    ``seed + n - 1``; the images ``POST /v1/generate`` gives). Methods that learn tokens only (DIG-ZSL)."""
    from PIL import Image

    from digzsl_ray.errors import UserError
    from digzsl_ray.live.versions import serving_meta
    from digzsl_ray.methods import get_method
    from digzsl_ray.serve.rundir import load_run_meta, run_config, version_store

    r = run_ if isinstance(run_, Run) else open_run(run_)
    cfg = run_config(r.path)
    generation = get_method(cfg.method).generation
    if generation is None:
        raise UserError(f"{r.path}: method {cfg.method!r} draws no images on request; generate needs a DIG-ZSL run")
    meta = serving_meta(version_store(r.path, load_run_meta(r.path)).active())
    if class_name not in meta["classes"]:
        raise UserError(f"unknown class {class_name!r}; the run knows {len(meta['classes'])} classes")
    pngs = generation(cfg)([{"class": class_name, "n": int(n), "seed": int(seed),
                                  "token": meta["tokens"].get(class_name)}])[0]
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
