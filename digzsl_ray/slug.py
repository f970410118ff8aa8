"""Safe file-name slugs for class names.

A slug is lower-case ASCII letters, digits and single dashes. Anything else (path separators,
dots, spaces, unicode) becomes a dash, so ``slugify(name)`` can never escape the directory it is
joined to. Names that leave nothing (``""``, ``"../"``) or would be ambiguous are rejected by
:func:`check_class_names`, not silently renamed.
"""

from __future__ import annotations

import re
import unicodedata

_BAD = re.compile(r"[^a-z0-9]+")
# A class name becomes file names (a method's per-class files), placeholder words, prompts
# and report labels; 200 characters leaves room under the 255-byte file-name limit of every common
# file system for the longest suffix the stages add.
MAX_NAME_CHARS = 200
# Bidirectional overrides, embeddings and isolates: they reorder how a name is displayed (U+202E
# makes "gpj.exe" read "exe.jpg"). Joiners (U+200C/U+200D) stay allowed: Persian and Indic names use them.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def slugify(name: str) -> str:
    """``"Black-footed Albatross"`` -> ``"black-footed-albatross"``; may return ``""``.

    A name with letters but no ASCII letter or digit (``"東京の鳥"``) gets its Punycode form
    (``"xn-<punycode>"``: lower-case ASCII, reversible, distinct for distinct names) instead of
    nothing."""
    ascii_slug = _BAD.sub("-", name.strip().lower()).strip("-")
    if ascii_slug or not any(c.isalpha() for c in name):
        return ascii_slug
    code = unicodedata.normalize("NFC", name.strip().lower()).encode("punycode").decode("ascii")
    return ("xn-" + _BAD.sub("-", code).strip("-"))[:MAX_NAME_CHARS]


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be a class name (its slug would escape or vanish), or None if fine."""
    if not name.strip():
        return "it is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"it has {len(name)} characters, more than {MAX_NAME_CHARS}"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI), None)
    if bad is not None:
        return f"it contains the control or format character U+{ord(bad):04X}"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name.strip() in (".", "..") or name.startswith("../") or ".." in name.split("/"):
        return "it is a relative path component"
    if not slugify(name):
        return "its slug (letters and digits) is empty"
    return None
