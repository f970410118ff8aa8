"""Reading untrusted pickles and ``.npy`` files without executing their code.

Dataset annotation files (DualCoOp's ``cls_id.pickle``, image-path ``.npy`` arrays) come from
third-party drives. ``pickle.load`` or ``np.load(allow_pickle=True)`` on them runs whatever the file
says, so this module never does that:

* :func:`load_pickle` unpickles with a restricted :class:`pickle.Unpickler` whose ``find_class``
  admits only numpy's array/scalar rebuild functions and dtypes (needed to rebuild a pickled
  ``ndarray`` of numbers or strings); every other global (``os.system``, ``builtins.eval``,
  any class) is refused. Plain containers (dict, list, tuple, set), str, bytes, int, float, bool
  and None need no global and load as usual. The result is then checked to hold nothing else.
* :func:`load_npy` reads numeric and string arrays with ``allow_pickle=False``; an object array
  (whose payload is a pickle) goes through the same restricted unpickler and must hold only str.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from digzsl_ray.errors import UserError


class UnsafeFileError(UserError):
    """A pickle or .npy file that asks for something other than plain data."""


_NUMPY_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")} | {
    (mod, name) for mod in ("builtins", "__builtin__") for name in ("set", "frozenset")  # protocol < 4 sets
} | {("_codecs", "encode")}  # protocol < 3 writes bytes as _codecs.encode(str, "latin1")
_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)  # numpy >= 1.25 pickles dtypes as numpy.dtypes.<X>DType


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS or (module in _NUMPY_DTYPE_MODULES and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeFileError(f"{self._source}: refuses to load '{module}.{name}': only plain containers, "
                              f"numbers, strings and numpy arrays of them are read from untrusted pickles")


_PLAIN = (str, bytes, int, float, bool, type(None), np.number, np.bool_)


def _check_plain(obj, source: str, depth: int = 0) -> None:
    if depth > 50:
        raise UnsafeFileError(f"{source}: nested more than 50 levels deep")
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            for x in obj.flat:
                _check_plain(x, source, depth + 1)
        elif obj.dtype.kind not in "biufcUS":
            raise UnsafeFileError(f"{source}: array of dtype {obj.dtype} is not plain data")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, source, depth + 1)
            _check_plain(v, source, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            _check_plain(x, source, depth + 1)
        return
    raise UnsafeFileError(f"{source}: holds a {type(obj).__name__}; only plain data is read")


def loads_pickle(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` admitting plain data only (see the module docstring)."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # truncated or corrupt: pickle raises many types
        raise UnsafeFileError(f"{source}: not a readable pickle ({type(e).__name__}: {str(e)[:200]})") from None
    _check_plain(obj, source)
    return obj


def load_pickle(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found")
    return loads_pickle(path.read_bytes(), str(path))


def load_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` array; object arrays only when they hold strings (read without running code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise UserError(f"{path}: not a .npy file ({e})") from None
        if dtype.hasobject:
            arr = loads_pickle(f.read(), str(path))
            if not isinstance(arr, np.ndarray):
                raise UnsafeFileError(f"{path}: object .npy payload is a {type(arr).__name__}, not an array")
            bad = next((x for x in arr.flat if not isinstance(x, (str, bytes))), None)
            if bad is not None:
                raise UnsafeFileError(f"{path}: object array holds a {type(bad).__name__}; only strings are read")
            return arr
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None
