"""Untrusted pickles and .npy files: plain data loads, anything that would run code is refused."""

import os
import pickle

import numpy as np
import pytest

from digzsl_ray.data.safeload import UnsafeFileError, load_npy, load_pickle, loads_pickle


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _Custom:
    pass


def test_plain_containers_and_numpy_arrays_load(tmp_path):
    obj = {"seen": [0, 2, 5], "unseen": (1, 3), "val": [], "names": {"a", "b"}, "w": 1.5, "ok": True, "n": None,
           "arr": np.arange(4, dtype=np.int64), "one": np.int64(7), "txt": np.array(["x", "yz"])}
    p = tmp_path / "cls_id.pickle"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    got = load_pickle(p)
    assert got["seen"] == [0, 2, 5] and got["unseen"] == (1, 3) and got["names"] == {"a", "b"}
    np.testing.assert_array_equal(got["arr"], np.arange(4))
    assert int(got["one"]) == 7 and list(got["txt"]) == ["x", "yz"]


@pytest.mark.parametrize("payload", [_Evil(), _Custom(), {"k": [_Evil()]}])
def test_code_and_classes_are_refused(payload, tmp_path):
    p = tmp_path / "bad.pickle"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeFileError, match=str(p)):
        load_pickle(p)


def test_builtins_eval_is_refused():
    data = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(UnsafeFileError, match="builtins.eval"):
        loads_pickle(data, "x.pickle")


def test_corrupt_pickle_is_a_clear_error():
    with pytest.raises(UnsafeFileError, match="not a readable pickle"):
        loads_pickle(pickle.dumps([1, 2, 3])[:-3], "cut.pickle")


def test_npy_numeric_string_and_object_string_arrays(tmp_path):
    np.save(tmp_path / "labels.npy", np.eye(3, dtype=np.uint8))
    np.save(tmp_path / "paths_u.npy", np.array(["a/1.jpg", "b/2.jpg"]))
    np.save(tmp_path / "paths_o.npy", np.array(["a/1.jpg", "b/2.jpg"], dtype=object), allow_pickle=True)
    np.testing.assert_array_equal(load_npy(tmp_path / "labels.npy"), np.eye(3))
    assert list(load_npy(tmp_path / "paths_u.npy")) == ["a/1.jpg", "b/2.jpg"]
    assert list(load_npy(tmp_path / "paths_o.npy")) == ["a/1.jpg", "b/2.jpg"]


def test_npy_object_array_with_code_is_refused(tmp_path):
    np.save(tmp_path / "evil.npy", np.array([_Evil(), "x"], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="os|posix|system"):
        load_npy(tmp_path / "evil.npy")
    np.save(tmp_path / "ints.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="only strings"):
        load_npy(tmp_path / "ints.npy")


def test_not_a_npy_file(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"hello world, not numpy")
    with pytest.raises(Exception, match="not a .npy file"):
        load_npy(tmp_path / "x.npy")
