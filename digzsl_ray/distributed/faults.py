"""Fault injection for resilience tests: ``DIGZSL_FAULT="<point>:<key>=<value>:<marker file>"``.

At the named point, when the key matches, the process raises once: the marker file records that
the fault fired, so the retried worker runs through. Unset (the default), this does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DIGZSL_FAULT"


class InjectedFault(RuntimeError):
    pass


def current_spec() -> str:
    """The driver's fault spec, to hand to remote workers (their environment is not the driver's)."""
    return os.environ.get(ENV, "")


def maybe_fail(point: str, spec: str | None = None, **where) -> None:
    spec = os.environ.get(ENV, "") if spec is None else spec
    if not spec:
        return
    try:
        name, cond, marker = spec.split(":", 2)
        key, value = cond.split("=", 1)
    except ValueError:
        return
    if name != point or str(where.get(key)) != value:
        return
    m = Path(marker)
    if m.exists():
        return
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(f"{point} {key}={value}\n")
    raise InjectedFault(f"injected fault at {point} ({key}={value})")
