"""Atomic, streaming writing of vector files in any supported format.

:class:`VectorWriter` appends blocks to a temporary file and renames it to the
final name only when closed cleanly (via :mod:`distributed_ondisk.atomic`), so
files larger than RAM can be written and a crash never leaves a partial file
under the final name.  Headers that record ``n`` (.npy, .*bin) are written with
a placeholder and patched at close.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import VectorFileError
from distributed_ondisk.vectors.formats import (
    BIN_DTYPES,
    BIN_HINT_DTYPES,
    MAX_DIM,
    VECS_DTYPES,
    format_of,
)

#: Rows are converted and written in pieces of about this many bytes (bounded memory).
WRITE_CHUNK_BYTES = 16 << 20
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_ALIGN = 64


def _npy_header(dtype: np.dtype, n: int, d: int, length: int | None = None) -> bytes:
    """A version-1.0 .npy header for a C-ordered (n, d) array, space-padded to
    ``length`` bytes; by default to the 64-byte multiple that fits a 21-digit ``n``,
    which leaves room to patch in the real ``n`` at close."""

    def text(rows: int) -> str:
        return (
            f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, "
            f"'fortran_order': False, 'shape': ({rows}, {d}), }}"
        )

    if length is None:
        need = len(_NPY_MAGIC) + 2 + len(text(10**20)) + 1
        length = -(-need // _NPY_ALIGN) * _NPY_ALIGN
    body_len = length - len(_NPY_MAGIC) - 2
    body = text(n).ljust(body_len - 1) + "\n"
    return _NPY_MAGIC + body_len.to_bytes(2, "little") + body.encode("latin1")


def _check_int_range(path: Path, arr: np.ndarray, target: np.dtype) -> None:
    info = np.iinfo(target)
    if arr.size and not np.can_cast(arr.dtype, target, "safe"):
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise VectorFileError(
                f"{path}: values span [{lo}, {hi}], outside the "
                f"{target} range [{info.min}, {info.max}] of this format"
            )


class VectorWriter:
    """Write ``d``-dimensional rows to ``path`` atomically, block by block.

    ``dtype`` is the on-disk value type: fixed by the extension for the *vecs and
    .*bin formats (conversion is checked: no float to int, integers must fit), free
    (numeric) for .npy (default float32) and required for .bin.  Use as a context
    manager; on an exception nothing appears under ``path``.
    """

    def __init__(self, path: os.PathLike | str, d: int, dtype=None) -> None:
        self.path = Path(path)
        self.format = format_of(self.path)
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 < d <= MAX_DIM:
            raise VectorFileError(
                f"{self.path}: cannot write vectors of dimension {d!r}; " f"valid is 1..{MAX_DIM}"
            )
        self.d = int(d)
        self.dtype = self._on_disk_dtype(dtype)
        self.n = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        # the ExitStack closes it (close() or abort()): the writer is itself the context
        self._f = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115
        self._header_len = 0
        if self.format == "npy":
            header = _npy_header(self.dtype, 0, self.d)
            self._header_len = len(header)
            self._f.write(header)
        elif self.format not in VECS_DTYPES:
            self._f.write(np.array([0, self.d], dtype="<u4").tobytes())

    def _on_disk_dtype(self, dtype) -> np.dtype:
        fixed = {**VECS_DTYPES, **BIN_DTYPES}.get(self.format)
        if fixed is not None:
            return fixed
        dt = np.dtype(np.float32 if dtype is None and self.format == "npy" else dtype)
        allowed = BIN_HINT_DTYPES if self.format == "bin" else None
        if (
            dt.fields is not None
            or dt.subdtype is not None
            or dt.kind not in "fiu"
            or (allowed is not None and dt not in allowed)
        ):
            valid = ", ".join(map(str, allowed)) if allowed else "a float or integer dtype"
            raise VectorFileError(
                f"{self.path}: cannot write {dt} values to " f".{self.format}; valid: {valid}"
            )
        return dt

    def _convert(self, block) -> np.ndarray:
        try:
            arr = np.asarray(block)
        except (ValueError, TypeError) as e:
            raise VectorFileError(
                f"{self.path}: cannot convert the data to an array: {e}"
            ) from None
        if arr.ndim != 2 or arr.shape[1] != self.d:
            raise VectorFileError(
                f"{self.path}: expected a 2-D array of shape (n, {self.d}), "
                f"got shape {arr.shape}"
            )
        if arr.dtype.kind not in "fiu" or arr.dtype.fields is not None:
            raise VectorFileError(
                f"{self.path}: cannot write {arr.dtype} data; expected " "float or integer values"
            )
        if self.dtype.kind in "iu":
            if arr.dtype.kind == "f":
                raise VectorFileError(
                    f"{self.path}: .{self.format} stores {self.dtype}; "
                    f"refusing to truncate {arr.dtype} values (convert "
                    "explicitly if that is intended)"
                )
            _check_int_range(self.path, arr, self.dtype)
        return arr

    def append(self, block) -> None:
        """Append rows (any 2-D array-like with ``d`` columns)."""
        arr = self._convert(block)
        if (
            self.format not in VECS_DTYPES
            and self.format != "npy"
            and self.n + len(arr) > 0xFFFFFFFF
        ):
            raise VectorFileError(
                f"{self.path}: .{self.format} headers hold at most " f"{0xFFFFFFFF} rows"
            )
        row_bytes = max(1, self.d * max(arr.dtype.itemsize, self.dtype.itemsize))
        step = max(1, WRITE_CHUNK_BYTES // row_bytes)
        for a in range(0, len(arr), step):
            part = arr[a : a + step]
            if self.format in VECS_DTYPES:
                rec = np.empty(len(part), dtype=[("dim", "<i4"), ("vec", self.dtype, (self.d,))])
                rec["dim"] = self.d
                rec["vec"] = part
                self._f.write(rec.data)
            else:
                self._f.write(np.ascontiguousarray(part, dtype=self.dtype).data)
        self.n += len(arr)

    def close(self) -> None:
        """Finish the header, fsync and rename into place."""
        if self._f.closed:
            return
        try:
            if self.n == 0 and self.format in VECS_DTYPES:
                raise VectorFileError(
                    f"{self.path}: cannot write zero rows to .{self.format} "
                    "(the dimension is stored per row; use .npy or .fbin)"
                )
            if self.format == "npy":
                self._f.seek(0)
                self._f.write(_npy_header(self.dtype, self.n, self.d, self._header_len))
            elif self.format not in VECS_DTYPES:
                self._f.seek(0)
                self._f.write(np.array([self.n, self.d], dtype="<u4").tobytes())
            self._f.flush()
        except BaseException as e:
            self.abort(e)
            raise
        self._stack.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard everything written; nothing appears under ``path``."""
        exc = exc or VectorFileError(f"{self.path}: write aborted")
        self._stack.__exit__(type(exc), exc, exc.__traceback__)

    # typing.Self needs Python 3.11 (we support 3.10) and typing_extensions is no
    # dependency; the class is not meant to be subclassed
    def __enter__(self) -> VectorWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def write_vectors(path: os.PathLike | str, array) -> None:
    """Write a 2-D array atomically; the format comes from the extension (.npy and
    .bin keep the array's dtype, the others convert with range checks)."""
    p = Path(path)
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError) as e:
        raise VectorFileError(f"{p}: cannot convert the data to an array: {e}") from None
    if arr.ndim != 2:
        raise VectorFileError(f"{p}: expected a 2-D array (n, d) to write, got shape {arr.shape}")
    fmt = format_of(p)
    with VectorWriter(p, arr.shape[1], arr.dtype if fmt in ("npy", "bin") else None) as w:
        w.append(arr)
