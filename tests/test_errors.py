"""Error helpers: bounded echoes and one-line messages."""

from digzsl_ray.errors import MissingInputError, UserError, one_line, short


def test_short_bounds_huge_and_self_nested_values():
    assert short("abc") == "'abc'"
    s = short("x" * 10_000)
    assert len(s) <= 200 and s.endswith("(10002 chars)")
    a: list = []
    a.append(a)
    assert len(short(a)) <= 200


def test_one_line_and_hierarchy():
    assert one_line("invalid config:\n  key 'a': bad\n  key 'b': bad") == "invalid config: key 'a': bad; key 'b': bad"
    assert issubclass(MissingInputError, UserError) and issubclass(UserError, ValueError)
