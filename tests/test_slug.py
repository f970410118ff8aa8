import pytest

from digzsl_ray.slug import slugify, unsafe_name_reason


def test_slugify_is_safe_and_readable():
    assert slugify("Black-footed Albatross") == "black-footed-albatross"
    assert slugify("striped red circle") == "striped-red-circle"
    for name in ["../x", "a/b", "..", "x\\y", "Ünïcode nàme", "a..b"]:
        s = slugify(name)
        assert "/" not in s and "\\" not in s and ".." not in s and not s.startswith(".")


@pytest.mark.parametrize("name, reason", [("", "empty"), ("   ", "empty"), ("../x", "path separator"),
                                          ("a/b", "path separator"), ("..", "relative path"), ("!!!", "slug")])
def test_unsafe_names(name, reason):
    assert reason in unsafe_name_reason(name)


def test_ordinary_names_are_fine():
    assert unsafe_name_reason("grizzly bear") is None


def test_joiners_are_names_bidi_overrides_are_not():
    from digzsl_ray.slug import unsafe_name_reason

    assert unsafe_name_reason("mi\u200cdan") is None  # ZWNJ, ordinary in Persian
    assert "U+202E" in unsafe_name_reason("gpj\u202eexe")
    assert "U+2066" in unsafe_name_reason("a\u2066b")
