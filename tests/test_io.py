"""Atomic writes: a failed write leaves neither a partial file nor a temporary sibling."""

import pytest

from digzsl_ray.io import atomic_path, read_json, write_json


def test_atomic_write_and_failure_leave_no_partial_file(tmp_path):
    p = tmp_path / "a" / "x.json"
    write_json(p, {"b": 1, "a": [1, 2]})
    assert p.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n' and read_json(p) == {"a": [1, 2], "b": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert read_json(p) == {"a": [1, 2], "b": 1}
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.json"]


def test_npz_and_safetensors_outputs_follow_the_umask(tmp_path):
    import os

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from digzsl_ray.io import atomic_path, write_npz

    old = os.umask(0o022)
    try:
        write_npz(tmp_path / "scores.npz", a=np.arange(3))
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    for name in ("scores.npz", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert np.load(tmp_path / "scores.npz")["a"].tolist() == [0, 1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
