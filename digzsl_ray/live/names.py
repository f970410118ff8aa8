"""Which class names the service accepts (`POST /v1/classes`, `digzsl add-class`)."""

from __future__ import annotations

import re
import unicodedata

from digzsl_ray.slug import slugify, unsafe_name_reason

# letters (any script), digits, spaces and a little punctuation that real class names use
_ALLOWED = re.compile(r"^[\w .,'()&+-]+$", re.UNICODE)


def name_problem(name, max_length: int = 64) -> str | None:
    """Why ``name`` cannot be added (a 400), or None."""
    if not isinstance(name, str):
        return "the class name must be a string"
    if not name.strip():
        return "the class name is empty"
    if len(name) > max_length:
        return f"the class name has {len(name)} characters; at most {max_length}"
    reason = unsafe_name_reason(name)
    if reason:
        return f"the class name is unusable: {reason}"
    if not _ALLOWED.match(name) or any(unicodedata.category(c).startswith("C") for c in name):
        bad = next((c for c in name if not _ALLOWED.match(c)), "?")
        return (f"the class name contains {bad!r} (U+{ord(bad):04X}); letters, digits, spaces and . , ' ( ) & + - "
                f"are accepted")
    if name != name.strip() or "  " in name:
        return "the class name has leading, trailing or repeated spaces"
    return None


def same_class(a: str, b: str) -> bool:
    """Two names that would be the same class (same slug: same token file, same placeholder)."""
    return slugify(a) == slugify(b)
