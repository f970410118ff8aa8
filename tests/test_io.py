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
