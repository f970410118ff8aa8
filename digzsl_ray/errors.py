"""The one base of every user mistake, kept free of heavy imports.

Everything a user can get wrong (a config value, a dataset, a model folder, a run directory of
another run, an earlier stage's output that is missing) raises a subclass of :class:`UserError`.
The CLI and ``jobs/`` turn it into one line on stderr and exit code 2, with no traceback; anything
else is a bug and keeps its traceback. This module imports nothing beyond the standard library, so
reporting a bad input never pays for importing torch.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
MAX_VALUE_CHARS = 200


class UserError(ValueError):
    """Bad input: the message names what is wrong and what to do."""


class MissingInputError(UserError):
    """An earlier stage's output is missing from the run directory."""


def short(value, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a message never echoes a huge input whole."""
    try:
        text = repr(value)
    except RecursionError:  # a self-referencing structure (YAML aliases)
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 25] + f"... ({len(text)} chars)"
    return text


def one_line(message: str) -> str:
    """A message as a single line (newlines of multi-problem messages become '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    out = ""
    for p in parts:
        out += p if not out else (" " if out.endswith(":") else "; ") + p
    return out
