"""The world registry: MiniWorld provides its data and its oracle; other formats have no world."""

from types import SimpleNamespace

from digzsl_ray.data.worlds import get_world, has_oracle, registered


def test_registry():
    assert "miniworld" in registered()
    w = get_world("miniworld")
    assert w.name == "miniworld" and w.prepare and w.load_oracle
    assert get_world("digzsl") is None and get_world("xlsa17") is None
    assert not has_oracle(SimpleNamespace(format="digzsl"))


def test_miniworld_oracle_is_the_shipped_one():
    from digzsl_ray.miniworld.provider import ORACLE_DIR

    w = get_world("miniworld")
    assert w.oracle_available() == (ORACLE_DIR / "config.json").is_file()
    if w.oracle_available():
        import torch

        oracle = w.load_oracle()
        assert len(oracle.classes) == 72
        assert oracle.predict(torch.rand(3, 3, 32, 32)).shape == (3,)
