"""The RPC codec: what an authenticated peer may send us, and nothing more.

Authentication says *who* sent a message, not that it is harmless.  This is not
pickle: the decoder only builds plain data -- None, bool, int, float, complex,
str, bytes, bytearray, list, tuple, dict, set, frozenset, slice, range, numpy
scalars, dtypes and scalar types, numpy arrays, and the project's registered
message types (dataclasses rebuilt from their fields) -- and never calls a
constructor with arguments the peer chose.  Every length is checked against the
bytes actually left before anything is built, nesting is bounded, and the
Python objects decoded are charged against a budget of the message's size plus
a constant, so a small message cannot grow into a large allocation.

An array is (dtype description, shape, order, data).  Its data is either
in-band (small arrays) or one of the out-of-band buffers that framing received
straight into their final memory; the buffer's length must equal
prod(shape) * itemsize exactly (no strides, no broadcasting), and the array is
a zero-copy view of it.

Encoder and decoder stay in one module (~420 lines) on purpose: every tag is
written and read side by side, and a change to one without the other is the
bug this layout makes visible.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from distributed_ondisk.errors import ForbiddenError, ProtocolError
from distributed_ondisk.rpc import wire_dtypes

FORMAT = 1  # first byte of every encoded message
MAX_DEPTH = 64  # containers inside containers
MAX_NDIM = 32
MAX_DIM = 1 << 40
MAX_MAP_ITEMS = 1 << 14  # dict/set entries: bounds the cost of crafted hash collisions
COST_SLACK = 32 << 20  # decoded Python objects may cost the message size plus this
# Rough CPython costs (bytes) charged per decoded object: generous, so that the
# budget bounds real memory.
_C_SLOT, _C_SCALAR, _C_VAR, _C_ENTRY = 16, 48, 80, 120

_registered: dict[str, type] = {}

_Q = struct.Struct("<q")
_D = struct.Struct("<d")
_DD = struct.Struct("<dd")
_I = struct.Struct("<I")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_message_type(cls: type) -> type:
    """Allow instances of the dataclass ``cls`` (defined in this project) in messages.

    Usable as a class decorator.  Only classes under ``distributed_ondisk`` can be
    registered, so the set of types a peer can make us build stays ours.
    """
    module = getattr(cls, "__module__", "")
    if not isinstance(cls, type) or not (
        module == "distributed_ondisk" or module.startswith("distributed_ondisk.")
    ):
        raise ForbiddenError(
            f"only classes from distributed_ondisk.* can travel over RPC, "
            f"not {module}.{getattr(cls, '__qualname__', cls)!s}"
        )
    if not dataclasses.is_dataclass(cls):
        raise ForbiddenError(
            f"{_type_name(cls)} is not a dataclass: only dataclasses can be "
            f"registered as RPC message types"
        )
    _registered[_type_name(cls)] = cls
    return cls


# -- encoding --------------------------------------------------------------------
class _Encoder:
    def __init__(self, inband_below: int) -> None:
        self.out = bytearray([FORMAT])
        self.buffers: list[memoryview] = []
        self.inband_below = inband_below

    def blob(self, tag: bytes, data: Any) -> None:
        self.out += tag
        self.out += _I.pack(len(data)) if len(data) < (1 << 32) else _too_big(data)
        self.out += data

    def seq(self, tag: bytes, items: Any, depth: int) -> None:
        self.out += tag
        self.out += _I.pack(len(items))
        for x in items:
            self.value(x, depth + 1)

    def value(self, obj: Any, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"message nested more than {MAX_DEPTH} levels deep")
        t = type(obj)
        out = self.out
        if obj is None:
            out += b"N"
        elif t is bool:
            out += b"T" if obj else b"F"
        elif t is int:
            if -(1 << 63) <= obj < (1 << 63):
                out += b"i"
                out += _Q.pack(obj)
            else:
                self.blob(b"I", obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True))
        elif t is float:
            out += b"f"
            out += _D.pack(obj)
        elif t is str:
            self.blob(b"s", obj.encode("utf-8", "surrogatepass"))
        elif t is bytes:
            self.blob(b"b", obj)
        elif t is tuple:
            self.seq(b"t", obj, depth)
        elif t is list:
            self.seq(b"l", obj, depth)
        elif t is dict:
            out += b"d"
            out += _I.pack(len(obj))
            for k, v in obj.items():
                self.value(k, depth + 1)
                self.value(v, depth + 1)
        elif isinstance(obj, np.ndarray):
            self.array(obj, depth)
        elif isinstance(obj, np.generic):
            a = np.asarray(obj)
            out += b"g"
            self.value(wire_dtypes.describe(a.dtype), depth + 1)
            self.blob(b"b", a.tobytes())
        elif t is complex:
            out += b"c"
            out += _DD.pack(obj.real, obj.imag)
        elif t is bytearray:
            self.blob(b"B", obj)
        elif t is set or t is frozenset:
            self.seq(b"S" if t is set else b"Z", list(obj), depth)
        elif t is slice or t is range:
            out += b"L" if t is slice else b"R"
            for x in (obj.start, obj.stop, obj.step):
                self.value(x, depth + 1)
        elif isinstance(obj, np.dtype):
            out += b"D"
            self.value(wire_dtypes.describe(obj), depth + 1)
        elif isinstance(obj, type) and obj in wire_dtypes.SCALAR_TYPE_NAMES:
            self.blob(b"y", wire_dtypes.SCALAR_TYPE_NAMES[obj].encode("ascii"))
        elif isinstance(obj, type) and obj in wire_dtypes.DTYPE_CLASS_NAMES:
            self.blob(b"Y", wire_dtypes.DTYPE_CLASS_NAMES[obj].encode("ascii"))
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            # Encoded by name even if unregistered: the receiver decides what it builds.
            self.blob(b"M", _type_name(t).encode("utf-8"))
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
            self.value(fields, depth + 1)
        else:
            raise ProtocolError(f"cannot serialise {t.__module__}.{t.__qualname__} for RPC")

    def array(self, a: np.ndarray, depth: int) -> None:
        if type(a) is not np.ndarray and not isinstance(a, np.memmap):
            raise ProtocolError(
                f"cannot serialise the array subclass {type(a).__name__} for "
                f"RPC (send a plain numpy array)"
            )
        desc = wire_dtypes.describe(a.dtype)
        order = "C"
        if not a.flags.c_contiguous:
            if a.flags.f_contiguous:
                order = "F"
            else:
                a = np.ascontiguousarray(a)
        self.out += b"a"
        self.value(desc, depth + 1)
        self.value(tuple(int(n) for n in a.shape), depth + 1)
        self.out += order.encode("ascii")
        if a.nbytes == 0:
            raw: Any = b""
        else:
            raw = memoryview(a.reshape(-1, order=order).view(np.uint8))
        if a.nbytes < self.inband_below:
            self.blob(b"b", raw)
        else:
            self.out += b"o"
            self.out += _I.pack(len(self.buffers))
            self.buffers.append(raw)


def _too_big(data: Any) -> bytes:
    raise ProtocolError(
        f"a string or bytes value of {len(data)} bytes is too large for one "
        f"RPC value (send a numpy array)"
    )


def dumps(obj: Any, inband_below: int = 0) -> tuple[bytes, list[memoryview]]:
    """Encode ``obj``: (in-band bytes, out-of-band array buffers as memoryviews, not
    copied).  Arrays smaller than ``inband_below`` bytes travel in-band.
    ProtocolError for anything that cannot travel."""
    enc = _Encoder(inband_below)
    enc.value(obj)
    return bytes(enc.out), enc.buffers


# -- decoding --------------------------------------------------------------------
class _Decoder:
    def __init__(self, data: Any, buffers: list[Any]) -> None:
        self.mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        self.pos = 1
        self.buffers = buffers
        self.used = [False] * len(buffers)
        self.budget = len(self.mv) + COST_SLACK

    def charge(self, cost: int) -> None:
        self.budget -= cost
        if self.budget < 0:
            raise ProtocolError(
                f"message of {len(self.mv)} bytes decodes to more than "
                f"{len(self.mv) + COST_SLACK} bytes of Python objects "
                f"(send numpy arrays for bulk data)"
            )

    def take(self, n: int) -> memoryview:
        if n > len(self.mv) - self.pos:
            raise ProtocolError(
                f"truncated message: {n} bytes needed, " f"{len(self.mv) - self.pos} left"
            )
        view = self.mv[self.pos : self.pos + n]
        self.pos += n
        return view

    def u32(self) -> int:
        return _I.unpack(self.take(4))[0]

    def count(self, what: str, cap: int | None = None) -> int:
        n = self.u32()
        if n > len(self.mv) - self.pos or (cap is not None and n > cap):
            raise ProtocolError(
                f"{what} of {n} items: more than the message holds"
                if cap is None or n <= cap
                else f"{what} of {n} items: at most {cap} are accepted"
            )
        return n

    def blob(self) -> memoryview:
        return self.take(self.u32())

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"message nested more than {MAX_DEPTH} levels deep")
        tag = self.take(1)[0]
        self.charge(_C_SLOT)
        if tag == 0x4E:  # N
            return None
        if tag == 0x54 or tag == 0x46:  # T F
            return tag == 0x54
        if tag == 0x69:  # i
            self.charge(_C_SCALAR)
            return _Q.unpack(self.take(8))[0]
        if tag == 0x66:  # f
            self.charge(_C_SCALAR)
            return _D.unpack(self.take(8))[0]
        if tag == 0x73:  # s: up to 4 bytes per character
            raw = self.blob()
            self.charge(_C_VAR + 4 * len(raw))
            try:
                return str(raw, "utf-8", "surrogatepass")
            except UnicodeDecodeError as e:
                raise ProtocolError(
                    f"malformed message: a string is not UTF-8 " f"({e.reason})"
                ) from None
        if tag == 0x62 or tag == 0x42 or tag == 0x49:  # b B I
            raw = self.blob()
            self.charge(_C_VAR + len(raw))
            if tag == 0x49:
                return int.from_bytes(raw, "little", signed=True)
            return bytes(raw) if tag == 0x62 else bytearray(raw)
        if tag in (0x74, 0x6C, 0x53, 0x5A):  # t l S Z
            cap = MAX_MAP_ITEMS if tag in (0x53, 0x5A) else None
            n = self.count("a sequence", cap)
            self.charge(_C_VAR + (_C_ENTRY if cap else 8) * n)
            items = [self.value(depth + 1) for _ in range(n)]
            if tag == 0x6C:
                return items
            if tag == 0x74:
                return tuple(items)
            return _hashed(set if tag == 0x53 else frozenset, items)
        if tag == 0x64:  # d
            n = self.count("a dict", MAX_MAP_ITEMS)
            self.charge(_C_VAR + _C_ENTRY * n)
            pairs = [(self.value(depth + 1), self.value(depth + 1)) for _ in range(n)]
            return _hashed(dict, pairs)
        if tag == 0x61:  # a
            return self.array(depth)
        if tag == 0x67:  # g: numpy scalar
            dt = wire_dtypes.rebuild(self.value(depth + 1))
            if self.take(1) != b"b":
                raise ProtocolError("malformed numpy scalar")
            raw = self.blob()
            if len(raw) != dt.itemsize or dt.itemsize == 0:
                raise ProtocolError(
                    f"numpy scalar of {dt}: {len(raw)} bytes for an item of " f"{dt.itemsize}"
                )
            self.charge(_C_VAR + len(raw))
            return np.frombuffer(raw, dt)[0].copy()
        if tag == 0x63:  # c
            self.charge(_C_SCALAR)
            return complex(*_DD.unpack(self.take(16)))
        if tag == 0x4C or tag == 0x52:  # L R
            parts = [self.value(depth + 1) for _ in range(3)]
            if not all(p is None or type(p) is int for p in parts):
                raise ProtocolError("slice/range bounds must be integers")
            self.charge(_C_VAR)
            try:
                return slice(*parts) if tag == 0x4C else range(*parts)
            except (TypeError, ValueError) as e:
                raise ProtocolError(f"bad range: {e}") from e
        if tag == 0x44:  # D
            self.charge(_C_VAR * 4)
            return wire_dtypes.rebuild(self.value(depth + 1))
        if tag == 0x79 or tag == 0x59:  # y Y
            name = str(self.blob(), "ascii", "replace")
            table = wire_dtypes.SCALAR_TYPES if tag == 0x79 else wire_dtypes.DTYPE_CLASSES
            if name not in table:
                raise ForbiddenError(f"numpy type {name[:60]!r} is not accepted over RPC")
            return table[name]
        if tag == 0x4D:  # M
            return self.message(depth)
        raise ProtocolError(f"malformed message: unknown value tag {tag:#04x}")

    def array(self, depth: int) -> np.ndarray:
        dt = wire_dtypes.rebuild(self.value(depth + 1))
        shape = self.value(depth + 1)
        if (
            type(shape) is not tuple
            or len(shape) > MAX_NDIM
            or not all(type(n) is int and 0 <= n <= MAX_DIM for n in shape)
        ):
            raise ProtocolError(f"bad array shape {str(shape)[:80]}")
        order = bytes(self.take(1))
        if order not in (b"C", b"F"):
            raise ProtocolError("bad array order")
        size = 1
        for n in shape:
            size *= n
        nbytes = size * dt.itemsize
        if size and dt.itemsize == 0:
            raise ProtocolError(f"array of {size} items of the zero-size dtype {dt}")
        where = self.take(1)
        self.charge(_C_VAR * 2)
        if where == b"b":
            raw: Any = self.blob()
            self.charge(len(raw))
        elif where == b"o":
            i = self.u32()
            if i >= len(self.buffers) or self.used[i]:
                raise ProtocolError(f"array refers to buffer {i}: missing or already used")
            self.used[i] = True
            raw = self.buffers[i]
        else:
            raise ProtocolError("bad array data marker")
        if len(memoryview(raw).cast("B")) != nbytes:
            raise ProtocolError(
                f"array {shape} of {dt} needs {nbytes} bytes, got "
                f"{len(memoryview(raw).cast('B'))}"
            )
        if nbytes == 0:
            return np.empty(shape, dt, order=order.decode())
        flat = np.frombuffer(raw, dtype=dt)
        if where == b"b":
            flat = flat.copy()  # small: own memory (aligned, writable) not the message's
        return flat.reshape(shape, order=order.decode())

    def message(self, depth: int) -> Any:
        name = str(self.blob(), "utf-8", "replace")
        fields = self.value(depth + 1)
        cls = _registered.get(name)
        if cls is None:
            raise ForbiddenError(
                f"refused to build {name[:120]}: not a registered RPC " f"message type"
            )
        expected = {f.name for f in dataclasses.fields(cls) if f.init}
        if type(fields) is not dict or set(fields) != expected:
            got = sorted(map(str, fields))[:20] if type(fields) is dict else "?"
            raise ProtocolError(f"{name}: fields {got} do not match {sorted(expected)}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"cannot build {name}: {e}") from e


def _hashed(kind: Any, items: list) -> Any:
    try:
        return kind(items)
    except TypeError as e:  # an unhashable key (list, array, dict)
        raise ProtocolError(f"malformed message: {e}") from e


def loads(data: Any, buffers: Iterable[Any] | None = None) -> Any:
    """Decode a message from :func:`dumps`.  ForbiddenError for refused content
    (object dtypes, unregistered types), ProtocolError for anything malformed or
    too large for the bytes it came in."""
    dec = _Decoder(data, list(buffers or ()))
    if len(dec.mv) < 1 or dec.mv[0] != FORMAT:
        raise ProtocolError("malformed message: not an RPC codec message (format byte)")
    obj = dec.value()
    if dec.pos != len(dec.mv):
        raise ProtocolError(f"malformed message: {len(dec.mv) - dec.pos} bytes after the value")
    if not all(dec.used):
        raise ProtocolError(
            f"message carries {dec.used.count(False)} array buffers it " f"does not use"
        )
    return obj
