"""Vector files: memory-mapped, validated reading of row ranges and atomic writing.

Formats (by extension): ``.fvecs`` ``.ivecs`` ``.bvecs`` (each row: int32 d, then d
float32 / int32 / uint8), ``.npy`` (any float/int dtype, C- or Fortran-ordered),
big-ann ``.fbin`` ``.u8bin`` ``.i8bin`` ``.ibin`` (uint32 n, uint32 d, then n*d
values) and ``.bin`` (the same with the dtype given by ``dtype_hint``).

Every problem raises :class:`~distributed_ondisk.errors.VectorFileError` with one
message naming the file: missing, unknown extension, empty *vecs file, truncated,
inconsistent row dimension, out-of-range rows, unsupported dtype/shape, NaN/Inf.
"""

from __future__ import annotations

import os

import numpy as np

from distributed_ondisk.vectors.formats import FORMATS, MAX_DIM, SUPPORTED, Layout, probe
from distributed_ondisk.vectors.reader import BLOCK_BYTES, VectorFile
from distributed_ondisk.vectors.writer import VectorWriter, write_vectors

__all__ = [
    "BLOCK_BYTES",
    "FORMATS",
    "MAX_DIM",
    "SUPPORTED",
    "Layout",
    "VectorFile",
    "VectorWriter",
    "open_vectors",
    "probe",
    "read_ints",
    "read_vectors",
    "write_vectors",
]


def open_vectors(path: os.PathLike | str, *, dtype_hint=None) -> VectorFile:
    """Open and validate a vector file (memory-mapped; no rows are read yet).

    ``dtype_hint``: the value type of a ``.bin`` file; for other formats, the dtype
    the caller expects (a mismatch is an error).
    """
    return VectorFile(path, dtype_hint=dtype_hint)


def read_vectors(
    path: os.PathLike | str, i0: int = 0, i1: int | None = None, *, check_finite: bool = True
) -> np.ndarray:
    """Rows ``[i0, i1)`` of a vector file as a float32 C-contiguous array."""
    with open_vectors(path) as vf:
        return vf.read(i0, i1, check_finite=check_finite)


def read_ints(path: os.PathLike | str, i0: int = 0, i1: int | None = None) -> np.ndarray:
    """Rows of an integer file (e.g. .ivecs ground-truth ids) as exact int64."""
    with open_vectors(path) as vf:
        return vf.read_ints(i0, i1)
