"""numpy dtypes and numpy type objects on the wire: described, never unpickled.

A dtype travels as a description (a validated type string, or the fields of a
structured dtype, or a subarray) and is rebuilt with ``np.dtype(...)`` from that
description, so a peer cannot set dtype state (flags, offsets, item sizes) that
numpy would not produce itself.  Object and variable-width string dtypes are
refused on every path: they hold Python objects or pointers.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from distributed_ondisk.errors import ForbiddenError, ProtocolError

MAX_FIELDS = 4096
MAX_DTYPE_DEPTH = 8
MAX_SUBARRAY_NDIM = 32

# Byte order, then kind and size: booleans, integers, floats, complex, fixed-size
# bytes / unicode / void, datetime and timedelta with an optional unit.
_SIMPLE = re.compile(
    r"[<>|](?:b1|[iu][1248]|f(?:2|4|8|16)|c(?:8|16|32)|[SUV][0-9]{1,9}"
    r"|[Mm]8(?:\[[0-9]{0,9}(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as|generic)\])?)"
)


def describe(d: np.dtype, depth: int = 0) -> Any:
    """A plain description of ``d`` (str / tuple of plain values); ProtocolError
    for dtypes that cannot travel."""
    if depth > MAX_DTYPE_DEPTH:
        raise ProtocolError(f"numpy dtype nested more than {MAX_DTYPE_DEPTH} levels")
    if d.hasobject or d.kind in "OT":
        raise ProtocolError(
            f"numpy dtype {d} holds Python objects: object arrays cannot " f"travel over RPC"
        )
    if d.subdtype is not None:
        base, shape = d.subdtype
        return ("sub", describe(base, depth + 1), tuple(int(n) for n in shape))
    if d.names is not None:
        fields = []
        for name in d.names:
            field = d.fields[name]
            if len(field) > 2:
                raise ProtocolError(f"numpy dtype {d}: field titles cannot travel over RPC")
            fields.append((name, describe(field[0], depth + 1), int(field[1])))
        return ("rec", int(d.itemsize), tuple(fields))
    return d.str


def rebuild(desc: Any, depth: int = 0) -> np.dtype:
    """The dtype a description names, after checking every part of it."""
    if depth > MAX_DTYPE_DEPTH:
        raise ProtocolError(f"numpy dtype nested more than {MAX_DTYPE_DEPTH} levels")
    if isinstance(desc, str):
        if _SIMPLE.fullmatch(desc) is None:
            if desc.lstrip("<>|=").startswith(("O", "T")):
                raise ForbiddenError(
                    f"numpy dtype {desc!r} holds Python objects: object "
                    f"arrays are not accepted over RPC"
                )
            raise ProtocolError(f"numpy dtype {desc[:40]!r} is not an accepted type string")
        return np.dtype(desc)
    if isinstance(desc, tuple) and len(desc) == 3 and desc[0] == "sub":
        _, base, shape = desc
        if (
            not isinstance(shape, tuple)
            or len(shape) > MAX_SUBARRAY_NDIM
            or not all(type(n) is int and 0 <= n < (1 << 31) for n in shape)
        ):
            raise ProtocolError(f"bad numpy subarray shape {str(shape)[:60]}")
        return np.dtype((rebuild(base, depth + 1), shape))
    if isinstance(desc, tuple) and len(desc) == 3 and desc[0] == "rec":
        _, itemsize, fields = desc
        if (
            type(itemsize) is not int
            or not 0 <= itemsize < (1 << 40)
            or not isinstance(fields, tuple)
            or len(fields) > MAX_FIELDS
        ):
            raise ProtocolError("bad structured numpy dtype description")
        names, formats, offsets = [], [], []
        for field in fields:
            if not (
                isinstance(field, tuple)
                and len(field) == 3
                and isinstance(field[0], str)
                and type(field[2]) is int
            ):
                raise ProtocolError("bad structured numpy dtype field")
            name, sub, offset = field
            fd = rebuild(sub, depth + 1)
            if offset < 0 or offset + fd.itemsize > itemsize:
                raise ProtocolError(
                    f"numpy dtype field {name[:40]!r} at offset {offset} "
                    f"does not fit in an item of {itemsize} bytes"
                )
            names.append(name)
            formats.append(fd)
            offsets.append(offset)
        try:
            return np.dtype(
                {"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize}
            )
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"bad structured numpy dtype: {e}") from e
    raise ProtocolError(f"bad numpy dtype description of type {type(desc).__name__}")


def _scalar_types() -> dict[str, type]:
    out = {}
    for name in dir(np):
        obj = getattr(np, name, None)
        if (
            isinstance(obj, type)
            and issubclass(obj, np.generic)
            and not issubclass(obj, np.object_)
            and obj.__name__ == name
        ):
            out[name] = obj
    return out


def _dtype_classes() -> dict[str, type]:
    return {
        name: getattr(np.dtypes, name)
        for name in dir(np.dtypes)
        if name.endswith("DType")
        and name not in ("ObjectDType", "StringDType")
        and isinstance(getattr(np.dtypes, name), type)
    }


#: numpy scalar types (np.float32, ...) and dtype classes that may travel, by name.
SCALAR_TYPES = _scalar_types()
DTYPE_CLASSES = _dtype_classes()
SCALAR_TYPE_NAMES = {cls: name for name, cls in SCALAR_TYPES.items()}
DTYPE_CLASS_NAMES = {cls: name for name, cls in DTYPE_CLASSES.items()}
