"""Immutable model versions of a served run directory.

```
OUT/classifier/                  version 0: what `digzsl run` trained (never rewritten here)
OUT/models/<id>/version.json     lineage (parent, added classes, created), classes, lambda, metrics, tokens
OUT/models/<id>/classifier/      weights.safetensors, config.json, classes.json (the shared format)
OUT/models/<id>/tokens/          the token files of the classes this version added
OUT/models/active.json           {"version": id}: what the service answers with (absent: version 0)
```
A version directory is written under a temporary name and renamed into place whole, so a reader
never sees half of one; ``active.json`` is replaced atomically. Nothing in ``models/`` is ever
modified after it appears: rolling back or forward only rewrites ``active.json``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from digzsl_ray.errors import UserError
from digzsl_ray.io import read_json, write_json

MODELS = "models"
ACTIVE = "active.json"
VERSION = "version.json"


class VersionError(UserError):
    """An unknown or damaged model version."""


def _digest(weights: Path) -> str:
    return hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]


def base_from_meta(run_dir: str | Path, meta: dict) -> dict:
    """Version 0 (the run's own classifier) from what serving read of the run directory
    (:func:`digzsl_ray.serve.load_run_meta`, its method's per-class ``tokens`` included), described
    like every other version."""
    return {"id": meta["model_version"], "number": 0, "parent": None, "added_classes": [], "created": None,
            "classes": meta["classes"], "seen": meta["seen"], "unseen": meta["unseen"], "lambda": meta["lambda"],
            "task": meta["task"], "threshold": meta["threshold"], "method": meta["method"],
            "classifier_dir": meta["classifier_dir"], "tokens": dict(meta.get("tokens", {})), "metrics": {},
            "extra": {}}


class VersionStore:
    """The versions of one run directory; ``base``: version 0 (:func:`base_from_meta`)."""

    def __init__(self, run_dir: str | Path, base: dict):
        self.run_dir, self.base = Path(run_dir), base
        self.root = self.run_dir / MODELS

    def _load(self, vdir: Path) -> dict:
        try:
            v = read_json(vdir / VERSION)
        except (OSError, ValueError) as e:
            raise VersionError(f"{vdir / VERSION}: unreadable ({type(e).__name__})") from None
        v["classifier_dir"] = str(vdir / "classifier")
        v["dir"] = str(vdir)
        # inherited tokens are relative to the run directory, the version's own to its folder
        v["tokens"] = {**{n: str(self.run_dir / p) for n, p in v.get("tokens", {}).items()},
                       **{n: str(vdir / p) for n, p in v.get("added_tokens", {}).items()}}
        return v

    def list(self) -> list[dict]:
        """Every version, oldest first (version 0 first)."""
        out = [self.base]
        if self.root.is_dir():
            found = [self._load(d) for d in self.root.iterdir() if d.is_dir() and (d / VERSION).is_file()]
            out += sorted(found, key=lambda v: (v.get("number", 0), v["id"]))
        return out

    def get(self, vid: str) -> dict:
        from digzsl_ray.errors import short
        from digzsl_ray.live.names import valid_id

        if vid == self.base["id"]:
            return self.base
        if not valid_id(vid) or not (self.root / vid / VERSION).is_file():
            raise VersionError(f"no model version {short(vid, 80)}; GET /v1/models lists them")
        return self._load(self.root / vid)

    @property
    def active_path(self) -> Path:
        return self.root / ACTIVE

    def active_id(self) -> str:
        """The served version's id: ``active.json``'s, or version 0 when there is no such file. A
        damaged file (not JSON, not an object, no ``version``) is a :class:`VersionError`, never a
        silent switch to version 0."""
        p = self.active_path
        try:
            obj = read_json(p)
        except FileNotFoundError:
            return self.base["id"]
        except (OSError, ValueError) as e:
            raise VersionError(f"{p}: damaged ({type(e).__name__}); `digzsl models --run OUT --activate ID` "
                               f"rewrites it") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("version"), str):
            raise VersionError(f"{p}: damaged (expected an object with a 'version' string); "
                               f"`digzsl models --run OUT --activate ID` rewrites it")
        return obj["version"]

    def active(self) -> dict:
        return self.get(self.active_id())

    def activate(self, vid: str) -> dict:
        """Make ``vid`` the served version (rollback or roll forward); returns it."""
        v = self.get(vid)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.active_path, {"version": v["id"], "activated": time.time()})
        return v

    def commit(self, staging: Path, meta: dict) -> dict:
        """Move a fully written ``staging`` folder (``classifier/``, ``tokens/``, anything else the
        method keeps) into ``models/<id>`` under a fresh id; returns the version. ``meta``: parent,
        added_classes, classes, seen, unseen, lambda, task, threshold, method, metrics, ``tokens``
        (the parent's, name -> absolute path), ``added_tokens`` (name -> path inside ``staging``),
        ``extra`` (the method's own, JSON)."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta = dict(meta, tokens={n: os.path.relpath(p, self.run_dir) for n, p in meta.get("tokens", {}).items()})
        number = 1 + max(v.get("number", 0) for v in self.list())
        name = meta.pop("run_name", "run")
        vid = f"{name}-v{number}-{_digest(staging / 'classifier' / 'weights.safetensors')}"
        write_json(staging / VERSION, {**meta, "id": vid, "number": number, "created": time.time()})
        os.replace(staging, self.root / vid)
        return self._load(self.root / vid)


def serving_meta(v: dict) -> dict:
    """What the ingress needs to answer with a version."""
    return {"classes": v["classes"], "seen": v["seen"], "lambda": float(v["lambda"]), "model_version": v["id"],
            "task": v.get("task", "single_label"), "threshold": float(v.get("threshold", 0.5)),
            "classifier_dir": v["classifier_dir"], "tokens": dict(v.get("tokens", {}))}


def public(v: dict) -> dict:
    """A version as `GET /v1/models` shows it (no file paths)."""
    return {"id": v["id"], "number": v.get("number", 0), "parent": v.get("parent"),
            "added_classes": v.get("added_classes", []), "created": v.get("created"), "classes": len(v["classes"]),
            "metrics": v.get("metrics", {})}
