"""Vector files: memory-mapped row ranges, validation at open and per block, atomic writes.

Formats (chosen by extension):

* ``.fvecs`` / ``.ivecs`` / ``.bvecs``: every row is an int32 dimension ``d``
  followed by ``d`` float32 / int32 / uint8 values (the TEXMEX format).
* ``.fbin`` / ``.u8bin`` / ``.i8bin`` / ``.ibin``: big-ann raw, a header of
  uint32 ``n``, uint32 ``d``, then ``n * d`` float32 / uint8 / int8 / int32 values.
* ``.npy``: any numeric 2-D array, C- or Fortran-ordered.

Nothing is read eagerly: the file is mapped, and a row range ``[i0, i1)`` touches
only its own pages (for a Fortran ``.npy``, ``d`` column segments).  Each *vecs
row repeats ``d``, so the mapping is viewed as ``(n, 1 + d)`` words (or
``(n, 4 + d)`` bytes for .bvecs) and the header column is sliced away; the
headers are sampled at open and checked in full for every block read.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from distributed_ondisk.atomic import atomic_open
from distributed_ondisk.errors import VectorFileError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MAX_DIM = 1_000_000
#: Default bytes of float32 per block yielded by :meth:`VectorFile.iter_blocks`.
BLOCK_BYTES = 64 << 20
#: Rows whose *vecs dimension header is checked at open (plus the first and last).
HEADER_SAMPLE = 1024
#: Rows per chunk when writing *vecs (bounded temporary memory).
WRITE_ROWS = 1 << 16


@dataclass(frozen=True)
class _Format:
    kind: str            # "vecs", "bin" or "npy"
    dtype: Optional[np.dtype]


FORMATS = {
    ".fvecs": _Format("vecs", np.dtype("<f4")),
    ".ivecs": _Format("vecs", np.dtype("<i4")),
    ".bvecs": _Format("vecs", np.dtype("u1")),
    ".fbin": _Format("bin", np.dtype("<f4")),
    ".u8bin": _Format("bin", np.dtype("u1")),
    ".i8bin": _Format("bin", np.dtype("i1")),
    ".ibin": _Format("bin", np.dtype("<i4")),
    ".npy": _Format("npy", None),
}
SUPPORTED = ", ".join(FORMATS)


def _format_of(path: Path) -> tuple[str, _Format]:
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise VectorFileError(f"{path}: unknown vector file extension {ext or '(none)'!r}; "
                              f"supported: {SUPPORTED}")
    return ext, FORMATS[ext]


def _check_dim(path: Path, d: int, where: str) -> None:
    if d <= 0 or d > MAX_DIM:
        raise VectorFileError(f"{path}: {where} gives dimension {d}, expected 1..{MAX_DIM} "
                              "(not a vector file of this format, or corrupted)")


class VectorFile:
    """A validated, memory-mapped vector file.  Use :func:`open_vectors`."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.format, fmt = _format_of(self.path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise VectorFileError(f"{self.path}: no such vector file") from None
        except OSError as e:
            raise VectorFileError(f"{self.path}: cannot access vector file: {e}") from None
        if not self.path.is_file():
            raise VectorFileError(f"{self.path}: not a regular file")
        if size == 0:
            raise VectorFileError(f"{self.path}: empty file (0 bytes)")
        self._headers: Optional[np.ndarray] = None  # *vecs dimension column, in int32
        try:
            if fmt.kind == "vecs":
                self._open_vecs(fmt.dtype, size)
            elif fmt.kind == "bin":
                self._open_bin(fmt.dtype, size)
            else:
                self._open_npy(size)
        except PermissionError as e:
            raise VectorFileError(f"{self.path}: cannot read: {e.strerror}") from None

    # -- opening -------------------------------------------------------------------
    def _read_head(self, nbytes: int) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(nbytes)

    def _open_vecs(self, dtype: np.dtype, size: int) -> None:
        head = self._read_head(4)
        if len(head) < 4:
            raise VectorFileError(f"{self.path}: truncated: {size} bytes, shorter than the "
                                  "4-byte dimension header")
        d = int(np.frombuffer(head, "<i4")[0])
        _check_dim(self.path, d, "the first row's header")
        row_bytes = 4 + d * dtype.itemsize
        if size % row_bytes:
            n = size // row_bytes
            raise VectorFileError(
                f"{self.path}: truncated or corrupted: size {size} bytes is not a multiple "
                f"of the row size {row_bytes} bytes (d={d}); expected {n * row_bytes} or "
                f"{(n + 1) * row_bytes} bytes, got {size}")
        n = size // row_bytes
        if dtype.itemsize == 4:
            words = np.memmap(self.path, dtype="<i4", mode="r", shape=(n, 1 + d))
            self._headers = words[:, 0]
            self._data = words[:, 1:].view(dtype)
        else:
            raw = np.memmap(self.path, dtype="u1", mode="r", shape=(n, 4 + d))
            self._headers = raw[:, :4]          # 4 bytes per row, decoded by _row_dims
            self._data = raw[:, 4:]
        self.n, self.d, self.dtype = n, d, dtype
        # Cheap structural check: first, last and a strided sample of the rows.
        sample = np.unique(np.r_[0, n - 1, np.linspace(0, n - 1, min(n, HEADER_SAMPLE),
                                                       dtype=np.int64)])
        self._check_headers(sample)

    def _row_dims(self, rows: Union[slice, np.ndarray]) -> np.ndarray:
        h = self._headers[rows]
        if h.ndim == 2:                          # bvecs: bytes -> little-endian int32
            h = np.ascontiguousarray(h).view("<i4")[:, 0]
        return h

    def _check_headers(self, rows: Union[slice, np.ndarray], offset: int = 0) -> None:
        dims = self._row_dims(rows)
        bad = np.flatnonzero(dims != self.d)
        if len(bad):
            if isinstance(rows, slice):
                row = offset + int(bad[0])
            else:
                row = int(rows[bad[0]])
            raise VectorFileError(
                f"{self.path}: row {row} has dimension header {int(dims[bad[0]])} but the "
                f"file's dimension is {self.d} (corrupted, or not a {self.format} file)")

    def _open_bin(self, dtype: np.dtype, size: int) -> None:
        head = self._read_head(8)
        if len(head) < 8:
            raise VectorFileError(f"{self.path}: truncated: {size} bytes, shorter than the "
                                  "8-byte header (uint32 n, uint32 d)")
        n, d = (int(v) for v in np.frombuffer(head, "<u4"))
        _check_dim(self.path, d, "the header")
        expected = 8 + n * d * dtype.itemsize
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise VectorFileError(
                f"{self.path}: {what}: header says n={n}, d={d} ({dtype.name}), so expected "
                f"{expected} bytes, got {size}")
        self.n, self.d, self.dtype = n, d, dtype
        self._data = (np.memmap(self.path, dtype=dtype, mode="r", offset=8, shape=(n, d))
                      if n else np.empty((0, d), dtype))

    def _open_npy(self, size: int) -> None:
        fmt = np.lib.format
        try:
            with open(self.path, "rb") as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=1 << 20)
                else:
                    shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=1 << 20)
                offset = f.tell()
        except (ValueError, OSError, SyntaxError) as e:
            raise VectorFileError(f"{self.path}: not a valid .npy file: {e}") from None
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "iuf":
            raise VectorFileError(f"{self.path}: unsupported .npy dtype {dtype} "
                                  "(expected a numeric int/uint/float dtype)")
        if len(shape) != 2:
            raise VectorFileError(f"{self.path}: .npy array has shape {shape}; expected 2-D "
                                  "(n, d)")
        n, d = (int(v) for v in shape)
        _check_dim(self.path, d, "the .npy shape")
        expected = offset + n * d * dtype.itemsize
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise VectorFileError(f"{self.path}: {what}: .npy header says shape {shape} "
                                  f"{dtype}, so expected {expected} bytes, got {size}")
        self.n, self.d, self.dtype = n, d, dtype
        self.fortran_order = bool(fortran)
        self._data = (np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=(n, d),
                                order="F" if fortran else "C")
                      if n else np.empty((0, d), dtype))

    # -- reading -------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, n={self.n}, d={self.d}, dtype={self.dtype})"

    def _range(self, i0: int, i1: Optional[int]) -> tuple[int, int]:
        i1 = self.n if i1 is None else i1
        if not (0 <= i0 <= i1 <= self.n):
            raise VectorFileError(f"{self.path}: row range [{i0}, {i1}) is invalid; the file "
                                  f"has {self.n} rows, valid: 0 <= i0 <= i1 <= {self.n}")
        return int(i0), int(i1)

    def raw(self, i0: int = 0, i1: Optional[int] = None) -> np.ndarray:
        """Rows ``[i0, i1)`` in the on-disk dtype, a read-only memmap view (no copy,
        no conversion: integer ids stay exact).  *vecs headers are checked."""
        i0, i1 = self._range(i0, i1)
        if self._headers is not None:
            self._check_headers(slice(i0, i1), i0)
        return self._data[i0:i1]

    def read(self, i0: int = 0, i1: Optional[int] = None, *,
             check_finite: bool = True) -> np.ndarray:
        """Rows ``[i0, i1)`` as a float32 C-contiguous copy."""
        i0, i1 = self._range(i0, i1)
        out = np.empty((i1 - i0, self.d), dtype=np.float32)
        # Copy at most ~BLOCK_BYTES at a time so the *vecs header check and the
        # finiteness check run on cache-sized pieces, not on a second full copy.
        step = self._block_rows(None)
        for a in range(i0, i1, step):
            b = min(i1, a + step)
            self._read_into(out[a - i0:b - i0], a, b, check_finite)
        return out

    def _read_into(self, out: np.ndarray, i0: int, i1: int, check_finite: bool) -> None:
        if self._headers is not None:
            self._check_headers(slice(i0, i1), i0)
        np.copyto(out, self._data[i0:i1], casting="unsafe")
        if check_finite and self.dtype.kind == "f" and len(out):
            # min/max propagate NaN and are vectorised with no temporary array.
            lo, hi = out.min(), out.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
                raise VectorFileError(
                    f"{self.path}: row {i0 + bad} contains NaN or Inf "
                    f"(after conversion to float32: {out[bad][~np.isfinite(out[bad])][:3]})")

    def _block_rows(self, block_rows: Optional[int]) -> int:
        if block_rows is None:
            return max(1, BLOCK_BYTES // (4 * self.d))
        if int(block_rows) < 1:
            raise VectorFileError(f"{self.path}: block_rows must be >= 1, got {block_rows}")
        return int(block_rows)

    def iter_blocks(self, i0: int = 0, i1: Optional[int] = None, *,
                    block_rows: Optional[int] = None,
                    check_finite: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 block)`` covering ``[i0, i1)`` exactly once, in
        order; blocks hold at most ``block_rows`` rows (default ~64 MiB of float32)."""
        i0, i1 = self._range(i0, i1)
        step = self._block_rows(block_rows)
        for a in range(i0, i1, step):
            b = min(i1, a + step)
            block = np.empty((b - a, self.d), dtype=np.float32)
            self._read_into(block, a, b, check_finite)
            yield a, block


def open_vectors(path: PathLike, *, dtype_hint: Optional[np.dtype] = None) -> VectorFile:
    """Open and validate a vector file (memory-mapped; no data is read).

    ``dtype_hint``, when given, is the dtype the caller expects on disk; a file
    of another dtype is refused with a message naming both.
    """
    vf = VectorFile(path)
    if dtype_hint is not None and np.dtype(dtype_hint) != vf.dtype:
        raise VectorFileError(f"{vf.path}: stores {vf.dtype} but {np.dtype(dtype_hint)} "
                              "was expected")
    return vf


def read_vectors(path: PathLike, i0: int = 0, i1: Optional[int] = None, *,
                 check_finite: bool = True) -> np.ndarray:
    """Rows ``[i0, i1)`` of a vector file as float32 C-contiguous (n, d)."""
    return VectorFile(path).read(i0, i1, check_finite=check_finite)


# -- writing ---------------------------------------------------------------------------
_INT_RANGES = {np.dtype("<i4"): (-2**31, 2**31 - 1), np.dtype("u1"): (0, 255),
               np.dtype("i1"): (-128, 127)}


def _to_disk_dtype(path: Path, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` converted to the format's dtype, refusing lossy conversions to integers."""
    if a.dtype == dtype:
        return a
    if dtype.kind == "f":
        if a.dtype.kind not in "iufb":
            raise VectorFileError(f"{path}: cannot store {a.dtype} data as {dtype.name}")
        return a.astype(dtype)
    if a.dtype.kind not in "iu":
        raise VectorFileError(f"{path}: {path.suffix} stores {dtype.name}, got {a.dtype} "
                              "data; convert it explicitly (no silent rounding of ids/codes)")
    lo, hi = _INT_RANGES[dtype]
    if a.size and (a.min() < lo or a.max() > hi):
        raise VectorFileError(f"{path}: values in [{a.min()}, {a.max()}] do not fit "
                              f"{dtype.name} [{lo}, {hi}]")
    return a.astype(dtype)


def write_vectors(path: PathLike, array: np.ndarray) -> None:
    """Write a 2-D array atomically in the format given by ``path``'s extension.

    Float data goes to float formats as float32; integer formats (.ivecs/.ibin
    int32, .bvecs/.u8bin uint8, .i8bin int8) take integer data that fits.  .npy
    keeps the array's own (numeric) dtype.
    """
    path = Path(path)
    _, fmt = _format_of(path)
    a = np.asarray(array)
    if a.ndim != 2:
        raise VectorFileError(f"{path}: can only write a 2-D (n, d) array, got shape {a.shape}")
    n, d = a.shape
    if d < 1 or d > MAX_DIM:
        raise VectorFileError(f"{path}: dimension {d} out of range 1..{MAX_DIM}")
    if fmt.kind == "npy":
        if a.dtype.hasobject or a.dtype.fields is not None or a.dtype.kind not in "iuf":
            raise VectorFileError(f"{path}: cannot write .npy of dtype {a.dtype} "
                                  "(numeric int/uint/float only)")
        with atomic_open(path, "wb") as f:
            np.lib.format.write_array(f, a, allow_pickle=False)
        return
    a = _to_disk_dtype(path, a, fmt.dtype)
    if fmt.kind == "bin":
        if n >= 2**32:
            raise VectorFileError(f"{path}: {n} rows do not fit the uint32 header")
        with atomic_open(path, "wb") as f:
            f.write(np.array([n, d], dtype="<u4").tobytes())
            for s in range(0, n, WRITE_ROWS):
                f.write(np.ascontiguousarray(a[s:s + WRITE_ROWS]).data)
        return
    if n == 0:
        raise VectorFileError(f"{path}: cannot store 0 rows in {path.suffix} (its dimension "
                              "lives in each row); use .npy or .fbin")
    hdr = np.frombuffer(np.int32(d).tobytes(), dtype="u1")
    with atomic_open(path, "wb") as f:
        for s in range(0, n, WRITE_ROWS):
            chunk = a[s:s + WRITE_ROWS]
            if fmt.dtype.itemsize == 4:
                rows = np.empty((len(chunk), 1 + d), dtype="<i4")
                rows[:, 0] = d
                rows[:, 1:] = chunk.view("<i4") if chunk.dtype.kind == "f" else chunk
            else:
                rows = np.empty((len(chunk), 4 + d), dtype="u1")
                rows[:, :4] = hdr
                rows[:, 4:] = chunk.view("u1")
            f.write(rows.data)
