"""File formats: extension table and header parsing into a :class:`Layout`.

Everything here only reads headers and file sizes; no vector data is touched.
A layout that passes :func:`probe` is guaranteed to fit inside the file, so the
memory map built from it can never run past the end (which would be a SIGBUS,
not an exception).

Empty files: ``.npy`` and the big-ann ``.*bin`` formats record ``d`` in a file
header, so ``n = 0`` is a valid, empty set of vectors.  The ``*vecs`` formats
store ``d`` in every row, so a zero-byte ``.fvecs`` has no dimension and is
rejected as empty (and :func:`~distributed_ondisk.vectors.write_vectors`
refuses to write one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from distributed_ondisk.errors import VectorFileError

#: Largest accepted dimension: real embeddings stay far below; anything larger
#: is a misread header (e.g. a .bvecs file read as .fvecs).
MAX_DIM = 1 << 20

#: ``*vecs``: each row is an int32 dimension followed by ``d`` values.
VECS_HEADER_BYTES = 4
VECS_DTYPES = {"fvecs": np.dtype("<f4"), "ivecs": np.dtype("<i4"), "bvecs": np.dtype("u1")}
#: big-ann-benchmarks raw files: uint32 n, uint32 d, then n*d values, row-major.
BIN_DTYPES = {
    "fbin": np.dtype("<f4"),
    "u8bin": np.dtype("u1"),
    "i8bin": np.dtype("i1"),
    "ibin": np.dtype("<i4"),
}
#: ``.bin`` is the same layout with the value type given by the caller (dtype_hint).
BIN_HINT_DTYPES = tuple(BIN_DTYPES.values())
FORMATS = (*VECS_DTYPES, *BIN_DTYPES, "npy", "bin")
SUPPORTED = ", ".join("." + f for f in FORMATS)
#: Samples of the per-row dimension checked at open (the rest is checked on read).
OPEN_HEADER_SAMPLES = 1024


@dataclass(frozen=True)
class Layout:
    """Where the vectors of one file are: ``n`` rows of ``d`` values of ``dtype``
    starting at byte ``offset``.  ``row_header``: each row is preceded by an int32
    (the ``*vecs`` formats).  ``fortran``: an .npy stored column-major."""

    path: Path
    format: str
    dtype: np.dtype
    n: int
    d: int
    offset: int
    file_size: int
    row_header: bool = False
    fortran: bool = False

    @property
    def row_bytes(self) -> int:
        return (VECS_HEADER_BYTES if self.row_header else 0) + self.d * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        return self.n * self.row_bytes

    def record_dtype(self) -> np.dtype:
        """The dtype of one row of a ``*vecs`` file: the dimension, then the values."""
        return np.dtype([("dim", "<i4"), ("vec", self.dtype, (self.d,))])


def format_of(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise VectorFileError(
            f"{path}: unknown vector file extension {path.suffix!r}; " f"supported: {SUPPORTED}"
        )
    return ext


def _check_dim(path: str | os.PathLike, d: int, where: str) -> None:
    if not 0 < d <= MAX_DIM:
        raise VectorFileError(
            f"{path}: {where} declares dimension {d}, outside 1..{MAX_DIM} "
            "(corrupt file or wrong extension?)"
        )


def _mismatch(size: int, expected: int) -> str:
    return "truncated" if size < expected else "trailing bytes"


def probe(path: os.PathLike | str, dtype_hint: np.dtype | None = None) -> Layout:
    """Parse and validate the header of ``path`` against its size."""
    p = Path(path)
    fmt = format_of(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise VectorFileError(f"{p}: vector file not found") from None
    except OSError as e:
        raise VectorFileError(f"{p}: cannot stat vector file: {e.strerror or e}") from None
    if not p.is_file():
        raise VectorFileError(f"{p}: not a regular file")
    try:
        with open(p, "rb") as f:
            if fmt in VECS_DTYPES:
                layout = _probe_vecs(p, f, st.st_size, fmt)
            elif fmt == "npy":
                layout = _probe_npy(p, f, st.st_size)
            else:
                layout = _probe_bin(p, f, st.st_size, fmt, dtype_hint)
    except OSError as e:
        raise VectorFileError(f"{p}: cannot read vector file: {e.strerror or e}") from None
    if dtype_hint is not None and np.dtype(dtype_hint) != layout.dtype:
        raise VectorFileError(f"{p}: holds {layout.dtype} values, expected {np.dtype(dtype_hint)}")
    return layout


def _probe_vecs(p: Path, f, size: int, fmt: str) -> Layout:
    dtype = VECS_DTYPES[fmt]
    if size == 0:
        raise VectorFileError(
            f"{p}: empty file, expected {fmt} vectors (a .{fmt} file stores "
            "its dimension in each row, so it cannot hold zero rows)"
        )
    if size < VECS_HEADER_BYTES:
        raise VectorFileError(
            f"{p}: truncated: {size} bytes, shorter than one row header ({VECS_HEADER_BYTES})"
        )
    d = int(np.frombuffer(f.read(VECS_HEADER_BYTES), dtype="<i4")[0])
    _check_dim(p, d, "row 0")
    row = VECS_HEADER_BYTES + d * dtype.itemsize
    if size % row:
        n_full = size // row
        raise VectorFileError(
            f"{p}: truncated or not .{fmt}: {size} bytes is not a multiple of the row size "
            f"{row} ({VECS_HEADER_BYTES}-byte header + {d} x {dtype.itemsize}); row {n_full} has "
            f"{size - n_full * row} of {row} bytes (expected {(n_full + 1) * row} bytes in all)"
        )
    return Layout(p, fmt, dtype, size // row, d, 0, size, row_header=True)


def _probe_bin(p: Path, f, size: int, fmt: str, dtype_hint) -> Layout:
    if fmt == "bin":
        if dtype_hint is None or np.dtype(dtype_hint) not in BIN_HINT_DTYPES:
            raise VectorFileError(
                f"{p}: a .bin file needs dtype_hint, one of "
                f"{', '.join(str(t) for t in BIN_HINT_DTYPES)}; "
                f"got {dtype_hint}"
            )
        dtype = np.dtype(dtype_hint)
    else:
        dtype = BIN_DTYPES[fmt]
    if size < 8:
        raise VectorFileError(
            f"{p}: truncated: {size} bytes, shorter than the 8-byte " "header (uint32 n, uint32 d)"
        )
    n, d = (int(v) for v in np.frombuffer(f.read(8), dtype="<u4"))
    _check_dim(p, d, "header")
    expected = 8 + n * d * dtype.itemsize
    if size != expected:
        raise VectorFileError(
            f"{p}: {_mismatch(size, expected)}: header says n={n}, d={d} "
            f"({dtype}) so the file should have {expected} bytes, but it "
            f"has {size}"
        )
    return Layout(p, fmt, dtype, n, d, 8, size)


@dataclass(frozen=True)
class NpyHeader:
    """A checked ``.npy`` header: ``n`` rows of ``d`` values of ``dtype`` from byte
    ``offset``; ``fortran`` only when the layout really is column-major (a Fortran
    array of one row or one column is also C-ordered)."""

    n: int
    d: int
    dtype: np.dtype
    offset: int
    fortran: bool


def read_npy_header(f: BinaryIO, size: int, name: str | os.PathLike) -> NpyHeader:
    """The one ``.npy`` header parser (local files here, any fsspec file in autobuild).

    ``f`` is positioned at the start of the file, ``size`` is its length and ``name``
    names it in errors.  Accepted: versions 1.0-3.0, a numeric (float, signed or
    unsigned int) 2-D array with ``1 <= d <= MAX_DIM`` whose data ends exactly at the
    end of the file.
    """
    fmtlib = np.lib.format
    try:
        version = fmtlib.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmtlib.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            # 3.0 only differs by allowing utf8 in structured field names, which we reject
            shape, fortran, dtype = fmtlib.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, EOFError) as e:
        raise VectorFileError(f"{name}: not a valid .npy file: {e}") from None
    offset = f.tell()
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "fiu":
        raise VectorFileError(
            f"{name}: unsupported .npy dtype {dtype}; expected a numeric "
            "(float, signed or unsigned int) dtype"
        )
    if len(shape) != 2:
        raise VectorFileError(f"{name}: .npy array has shape {shape}; expected 2-D (n, d)")
    n, d = (int(v) for v in shape)
    _check_dim(name, d, "header")
    expected = offset + n * d * dtype.itemsize
    if size != expected:
        raise VectorFileError(
            f"{name}: {_mismatch(size, expected)}: .npy header says shape "
            f"{shape} of {dtype} so the file should have {expected} bytes, "
            f"but it has {size}"
        )
    return NpyHeader(n, d, dtype, offset, bool(fortran) and n > 1 and d > 1)


def _probe_npy(p: Path, f: BinaryIO, size: int) -> Layout:
    h = read_npy_header(f, size, p)
    return Layout(p, "npy", h.dtype, h.n, h.d, h.offset, size, fortran=h.fortran)
