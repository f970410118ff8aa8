"""The method registry: ``method:`` in a run config names one of these.

A method is a package under ``digzsl_ray/methods/<name>/`` whose ``__init__`` defines ``METHOD``, a
:class:`digzsl_ray.stages.contract.Method`: its config class (the shared sections plus its own),
its stage list in pipeline order and its ablation variants. The shared core never imports a
method; the CLI, ``jobs/`` and serving find methods here. Registering the next method is one line
in ``_BUILTIN``; a third-party package may also register through the ``digzsl_ray.methods`` entry
point group (``name = "package.module"``, a module defining ``METHOD``).
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from digzsl_ray.config import ConfigError, read_config_data, validate_config
from digzsl_ray.errors import short

log = logging.getLogger("digzsl")

DEFAULT_METHOD = "digzsl"
_BUILTIN = {"digzsl": "digzsl_ray.methods.digzsl", "multilabel": "digzsl_ray.methods.multilabel",
            "zerodiff": "digzsl_ray.methods.zerodiff"}


def registered() -> dict[str, str]:
    """Method name -> module path, built-in methods first."""
    out = dict(_BUILTIN)
    for ep in entry_points(group="digzsl_ray.methods"):
        out.setdefault(ep.name, ep.value)
    return out


def get_method(name: str = DEFAULT_METHOD):
    """The :class:`Method` registered as ``name``; a :class:`ConfigError` for an unknown name."""
    methods = registered()
    if name not in methods:
        raise ConfigError(f"key 'method': got {short(name)}; expected one of {', '.join(methods)}")
    return importlib.import_module(methods[name]).METHOD


def method_of(data: dict) -> str:
    name = data.get("method", DEFAULT_METHOD) if isinstance(data, dict) else DEFAULT_METHOD
    if not isinstance(name, str):
        raise ConfigError(f"key 'method': got {short(name)} ({type(name).__name__}); expected a method name")
    return name


def drop_foreign_sections(data: dict, method: str) -> dict:
    """``data`` without the top-level sections that belong to *other* registered methods only (so
    ``--config miniworld --set method=zerodiff`` ignores DIG-ZSL's ``tokens:``); a key no method
    knows stays, and validation names it."""
    own = set(get_method(method).config.model_fields)
    foreign = set()
    for name in registered():
        if name != method:
            try:
                foreign |= set(get_method(name).config.model_fields) - own
            except Exception:  # a broken third-party method must not break this one
                continue
    dropped = sorted(k for k in data if k in foreign)
    if dropped:
        log.info("config: sections %s belong to other methods; method %r ignores them", ", ".join(dropped), method)
    return {k: v for k, v in data.items() if k not in foreign}


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """The validated run config of a YAML file plus ``key=value`` overrides, with the config class
    of the method it names (``method:``, default digzsl)."""
    data, source = read_config_data(path, overrides)
    method = method_of(data)
    return validate_config(drop_foreign_sections(data, method), get_method(method).config, source)


def validate_run_config(data: dict, source: str = "") -> Any:
    """A run config from a plain dict (a run directory's config.yaml, a Ray worker's payload)."""
    method = method_of(data)
    return validate_config(drop_foreign_sections(data, method), get_method(method).config, source)
