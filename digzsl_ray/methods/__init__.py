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
    """``data`` without what belongs to *other* registered methods only: their top-level sections (so
    ``--config miniworld --set method=zerodiff`` ignores DIG-ZSL's ``tokens:``) and the keys their
    versions of a shared section add (DIG-ZSL's ``serve.generate_*`` and ``live.epochs`` in a
    multi-label config, or in a run directory written before those keys moved to DIG-ZSL). A key no
    method knows stays, and validation names it."""
    own_cls = get_method(method).config
    own = set(own_cls.model_fields)
    foreign, foreign_keys = set(), {}
    for name in registered():
        if name == method:
            continue
        try:
            other = get_method(name).config
        except Exception:  # a broken third-party method must not break this one
            continue
        foreign |= set(other.model_fields) - own
        for section in own & set(other.model_fields):
            mine, theirs = _section_keys(own_cls, section), _section_keys(other, section)
            if mine is not None and theirs is not None:
                foreign_keys.setdefault(section, set()).update(theirs - mine)
    dropped = sorted(k for k in data if k in foreign)
    if dropped:
        log.info("config: sections %s belong to other methods; method %r ignores them", ", ".join(dropped), method)
    out = {k: v for k, v in data.items() if k not in foreign}
    for section, keys in foreign_keys.items():
        if isinstance(out.get(section), dict) and keys & set(out[section]):
            gone = sorted(keys & set(out[section]))
            log.info("config: %s belong to other methods' %s section; method %r ignores them",
                     ", ".join(f"{section}.{k}" for k in gone), section, method)
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def _section_keys(config_cls, section: str) -> set | None:
    """The keys of ``config_cls``'s section ``section`` (None when it is not a config section)."""
    from pydantic import BaseModel

    ann = config_cls.model_fields[section].annotation
    return set(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else None


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
