"""Pickle with a strict allowlist: what an authenticated peer may send us.

Authentication says *who* sent a message, not that it is harmless: a bug or a
compromised worker must still not be able to run code in the server.  So the
unpickler only resolves an explicit set of globals (builtin scalars and
containers, numpy arrays / dtypes / scalars, and message types the project
registered) and refuses everything else with :class:`ForbiddenError`.

Why the pure-Python unpickler: numpy lets a pickle's BUILD state rewrite a
dtype's flags, field offsets and subarray shapes without checking them against
the item size (``np.dtype('f4').__setstate__`` can mark it as holding object
pointers).  That is memory corruption waiting to happen, and the C unpickler
offers no hook on BUILD.  The Python unpickler lets us validate every BUILD; it
costs ~20 µs per message, and big arrays never go through it (they travel as
out-of-band protocol-5 buffers).
"""
from __future__ import annotations

import builtins
import io
import pickle
from typing import Any, Iterable, Optional

import numpy as np

from distributed_ondisk.errors import ForbiddenError, ProtocolError

PROTOCOL = 5

# Builtin types a message may contain (most travel as opcodes; these are the
# ones pickle reaches through a global, plus the type objects themselves).
_BUILTIN_NAMES = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
                  "int", "float", "complex", "bool", "slice", "range")

_registered: dict[tuple[str, str], type] = {}


def register_message_type(cls: type) -> type:
    """Allow instances of ``cls`` (a class of this project) in RPC messages.

    Usable as a class decorator.  Only classes defined under ``distributed_ondisk``
    can be registered, so the allowlist cannot be widened to arbitrary code.
    """
    module = getattr(cls, "__module__", "")
    if not isinstance(cls, type) or not (module == "distributed_ondisk"
                                         or module.startswith("distributed_ondisk.")):
        raise ForbiddenError(f"only classes from distributed_ondisk.* can travel over RPC, "
                             f"not {module}.{getattr(cls, '__qualname__', cls)!s}")
    _registered[(module, cls.__qualname__)] = cls
    return cls


def _check_dtype(d: np.dtype, where: str = "dtype") -> np.dtype:
    """Refuse dtypes that hold Python objects or whose layout is inconsistent."""
    if not isinstance(d, np.dtype):
        raise ForbiddenError(f"{where}: expected a numpy dtype, got {type(d).__name__}")
    # Flag bits 0x1/0x2/0x4: refcounted items, list pickling, pointers (object-like).
    if d.hasobject or d.kind in ("O", "T") or (d.flags & 0x07):
        raise ForbiddenError(f"{where}: numpy dtype {d!r} holds Python objects; object "
                             f"arrays are not accepted over RPC")
    if d.subdtype is not None:
        base, shape = d.subdtype
        fresh = np.dtype((_check_dtype(base, where), shape))
    elif d.names is not None:
        spec: dict[str, Any] = {"names": [], "formats": [], "offsets": [], "titles": [],
                                "itemsize": d.itemsize, "aligned": d.isalignedstruct}
        for name in d.names:
            field = d.fields[name]
            spec["names"].append(name)
            spec["formats"].append(_check_dtype(field[0], where))
            spec["offsets"].append(field[1])
            spec["titles"].append(field[2] if len(field) > 2 else None)
        fresh = np.dtype(spec)
    else:
        fresh = np.dtype(d.str)
    if fresh != d or fresh.itemsize != d.itemsize or (fresh.flags & 0x0F) != (d.flags & 0x0F):
        raise ForbiddenError(f"{where}: inconsistent numpy dtype state {d!r}")
    return d


def _safe_dtype(obj: Any, align: bool = False, copy: bool = True) -> np.dtype:
    # Always copy: with copy=False numpy returns its shared builtin dtype, and a
    # following BUILD would modify float64 for the whole process.
    return _check_dtype(np.dtype(obj, bool(align), True))


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    table: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x module paths
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    table[("numpy", "dtype")] = _safe_dtype
    table[("numpy", "ndarray")] = np.ndarray
    for name in dir(np.dtypes):
        cls = getattr(np.dtypes, name)
        if name.endswith("DType") and name not in ("ObjectDType", "StringDType"):
            table[("numpy.dtypes", name)] = cls
    for name in dir(np):
        obj = getattr(np, name, None)
        if (isinstance(obj, type) and issubclass(obj, np.generic)
                and not issubclass(obj, np.object_)):
            table[("numpy", name)] = obj
    return table


_ALLOWED: dict[tuple[str, str], Any] = {("builtins", n): getattr(builtins, n)
                                         for n in _BUILTIN_NAMES}
_ALLOWED.update(_numpy_globals())


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickler that resolves only allowlisted globals and validates every BUILD."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name)) or _registered.get((module, name))
        if obj is None:
            raise ForbiddenError(f"refused to unpickle global {module}.{name}: not in the "
                                 f"RPC allowlist")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenError("refused to unpickle a persistent id")

    def load_build(self) -> None:
        target = self.stack[-2]  # BUILD: state on top, the object below it
        if isinstance(target, np.dtype):
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            _check_dtype(target, "BUILD")
        elif type(target) is np.ndarray:
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            _check_dtype(target.dtype, "array BUILD")
        elif (type(target).__module__, type(target).__qualname__) in _registered:
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        else:
            raise ForbiddenError(f"refused to set the state of a {type(target).__name__} "
                                 f"while unpickling")

    dispatch[pickle.BUILD[0]] = load_build


def loads(data: Any, buffers: Optional[Iterable[Any]] = None) -> Any:
    """Unpickle ``data`` with the allowlist.  ForbiddenError for refused content,
    ProtocolError for anything malformed."""
    try:
        return SafeUnpickler(io.BytesIO(data), fix_imports=False, buffers=buffers).load()
    except ForbiddenError:
        raise
    except RecursionError as e:
        raise ProtocolError("malformed pickle: nested too deeply") from e
    except Exception as e:  # malformed input can raise nearly anything
        raise ProtocolError(f"malformed pickle: {type(e).__name__}: {e}") from e


def dumps(obj: Any, inband_below: int = 0) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5; contiguous array data is returned as raw
    memoryviews (no copy) instead of being written into the pickle.

    Buffers smaller than ``inband_below`` bytes stay inside the pickle.
    """
    buffers: list[memoryview] = []

    def take(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < inband_below:
            return True  # serialise in-band
        buffers.append(view)
        return False

    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=take)
    except Exception as e:
        raise ProtocolError(f"cannot serialise {type(obj).__name__} for RPC: "
                            f"{type(e).__name__}: {e}") from e
    return data, buffers

