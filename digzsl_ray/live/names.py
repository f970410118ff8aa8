"""Which class names the service accepts (`POST /v1/classes`, `digzsl add-class`): any script,
one script per name (a Latin name with a Cyrillic or Greek lookalike letter is refused), compared
with the known names by slug and by confusable skeleton."""

from __future__ import annotations

import re
import unicodedata

from digzsl_ray.slug import slugify, unsafe_name_reason

# what a job or model-version id can be: the ids this service makes are ASCII slugs of at most 64
# characters; anything else (a 5000-character id, a path) is an unknown id, never a file name to try
MAX_ID = 64
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def valid_id(value) -> bool:
    """Whether ``value`` can name a job or a model version (checked before it touches the file system)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and bool(_ID.match(value))


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
    if len(_scripts(name)) > 1:
        return (f"the class name mixes {' and '.join(sorted(s.title() for s in _scripts(name)))} letters, which "
                f"is how lookalikes of other names are made; write it in one script")
    return None


# Letters of other scripts that render like Latin ones (after Unicode TR39's confusables: the Cyrillic
# and Greek lookalikes of the Latin alphabet); a name's skeleton maps them to the Latin letter.
_CONFUSABLE = str.maketrans({
    **dict(zip("аеорсухіјѕԁһкмтвнԛԝ", "aeopcyxijsdhkmtbнqw")),
    **dict(zip("АВЕКМНОРСТХУІЈЅ", "abekmhopctxyijs")),
    **dict(zip("αβεικνορτυχηζ", "abeiknoptuxnz")),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "abezhikmnoptyx")),
})


def skeleton(name: str) -> str:
    """What ``name`` looks like: compatibility-decomposed, case-folded, accents dropped and Cyrillic
    or Greek lookalikes mapped to Latin letters, spaces and punctuation collapsed."""
    text = unicodedata.normalize("NFKD", name).casefold()
    text = "".join(c for c in text if not unicodedata.combining(c)).translate(_CONFUSABLE)
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _scripts(name: str) -> set[str]:
    """The scripts of ``name``'s letters among Latin, Cyrillic and Greek (the lookalike alphabets)."""
    out = set()
    for c in name:
        if c.isalpha():
            n = unicodedata.name(c, "")
            out |= {s for s in ("LATIN", "CYRILLIC", "GREEK") if n.startswith(s)}
    return out


def same_class(a: str, b: str) -> bool:
    """Two names that would be the same class: the same slug (same token file, same placeholder) or
    the same skeleton (``striped blue tri\u0430ngle`` with a Cyrillic a is ``striped blue triangle``)."""
    return slugify(a) == slugify(b) or skeleton(a) == skeleton(b)
