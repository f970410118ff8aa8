"""Seeds derived from names are stable across machines and distinct across purposes."""

from digzsl_ray.seeds import class_seed


def test_class_seed_is_stable_31_bit_and_tag_separated():
    a = class_seed("red ring", 0)
    assert a == class_seed("red ring", 0, "dct-train") and 0 <= a < 2**31
    assert len({class_seed("red ring", 0, t) for t in ("dct-train", "dct-eval", "generate-dct")}) == 3
    assert class_seed("red ring", 1) != a and class_seed("blue ring", 0) != a
    assert class_seed("x", 0) == 603790723  # the same number on every machine (sha256-based)
