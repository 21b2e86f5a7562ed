"""Typed JSON records: frozen dataclasses whose fields are the keys of a JSON object.

The manifests (:mod:`~distributed_ondisk.ondisk.schema`) are such records.  A record
writes itself with ``to_json()`` and is read back with ``from_doc()``, which checks the
document against the field annotations (``int``, ``float``, ``str``, ``bool``, ``Any``,
``Literal[...]``, ``X | None``, ``tuple[...]``, ``dict[str, X]``, nested records): an
unknown key, a missing required key or a value of another type is an IndexFileError
naming the manifest file and the key (``regions.block_lists``).  Fields made with
:data:`OPTIONAL` are left out of the JSON at their default and take it when absent.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from distributed_ondisk.errors import IndexFileError

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

_OMIT = "omit_when_default"
# field(default=..., metadata=OPTIONAL): a key left out of the JSON at its default, and
# the default when a document lacks it (how keys added later keep old documents valid)
OPTIONAL = types.MappingProxyType({_OMIT: True})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _load(value: Any, hint: Any, where: str, key: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``hint``."""

    def bad(expected: str) -> IndexFileError:
        return IndexFileError(
            f"{where}: manifest key {key!r} is {type(value).__name__} {value!r:.60}, "
            f"expected {expected}"
        )

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is types.UnionType:  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _load(value, inner, where, key)
    if origin is Literal:
        if value not in args:
            raise bad(" or ".join(map(repr, args)))
        return value
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_doc(value, where, f"{key}.")
    if origin is tuple:
        if not isinstance(value, list):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_load(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(_load(v, a, where, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("an object")
        return {k: _load(v, args[1], where, f"{key}.{k}") for k, v in value.items()}
    # bool is an int to Python, never to a manifest; an integral float is no int either
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise bad(_type_name(hint))


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class Record:
    """A JSON object with typed keys (field name = key): manifests and their parts."""

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get(_OMIT) and v == f.default:
                continue
            out[f.name] = _dump(v)
        return out

    @classmethod
    def from_doc(cls, doc: Any, where: str, prefix: str = "") -> Self:
        """The record of ``doc``; ``where`` (the manifest file) and ``prefix`` (the key of
        this object in it) name the place of a bad key."""
        return cls._build(doc, where, prefix)

    @classmethod
    def _build(cls, doc: Any, where: str, prefix: str) -> Self:
        if not isinstance(doc, dict):
            raise IndexFileError(f"{where}: manifest key {prefix[:-1]!r} is not an object")
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        extra = sorted(set(doc) - set(fields))
        if extra:
            raise IndexFileError(
                f"{where}: unexpected manifest key {prefix + extra[0]!r} "
                f"(not in {cls.__name__})"
            )
        values = {}
        for name, f in fields.items():
            if name in doc:
                values[name] = _load(doc[name], hints[name], where, prefix + name)
            elif not f.metadata.get(_OMIT):
                raise IndexFileError(f"{where}: manifest lacks key {prefix + name!r}")
        rec = cls(**values)
        rec.check(where)
        return rec

    def check(self, where: str) -> None:
        """Value rules beyond the types (ranges in order, ...); IndexFileError naming ``where``."""
