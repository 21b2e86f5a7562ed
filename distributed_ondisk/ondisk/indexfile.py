"""faiss index plumbing shared by the build stages and the shard reader.

* reading an index file with errors that name the file,
* the *structure digest*: a hash of everything in an IVF index except its
  coarse quantizer content and its inverted lists (transform, encoder
  parameters, nlist, d, ...) so that a slice can be checked against its
  trained index even without the trained index at hand,
* swapping the coarse quantizer for an empty placeholder, so that the
  quantizer (hundreds of MB for millions of centroids) is not copied into
  every slice and shard,
* the per-list (size, offset) table of a memory-mapped slice, read without a
  Python call per list.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.errors import IndexFileError

PathLike = Union[str, "os.PathLike[str]"]


def read_index(path: PathLike, flags: int = 0) -> faiss.Index:
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise IndexFileError(f"{p}: no such index file")
    try:
        return faiss.read_index(p, flags)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "faiss could not parse it"
        raise IndexFileError(f"{p}: unreadable index file ({first})") from e


def write_index(index: faiss.Index, path: PathLike) -> None:
    """faiss.write_index through a Python file: faiss's own file writer only prints a
    failed final flush (disk full) and returns, leaving a truncated file; here every
    failed write or flush raises OSError."""
    with open(path, "wb") as f:
        writer = faiss.PyCallbackIOWriter(f.write)
        try:
            faiss.write_index(index, writer)
        finally:
            del writer


def ivf_of(index: faiss.Index, where: str) -> faiss.IndexIVF:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError as e:
        raise IndexFileError(f"{where}: not an IVF index") from e


@contextlib.contextmanager
def placeholder_quantizer(index: faiss.Index) -> Iterator[faiss.IndexIVF]:
    """Temporarily give the IVF an empty flat quantizer of the same dimension.

    faiss serializes the quantizer inline and reads an empty one back without
    complaint; the real one is restored afterwards (ownership flags included,
    so nothing is freed twice).
    """
    ivf = faiss.extract_index_ivf(index)
    real, own = ivf.quantizer, ivf.own_fields
    empty = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.own_fields = False
    ivf.quantizer = empty
    try:
        yield ivf
    finally:
        ivf.quantizer = real
        ivf.own_fields = own


@contextlib.contextmanager
def without_lists(index: faiss.Index) -> Iterator[faiss.IndexIVF]:
    """Temporarily show the index with empty inverted lists and ntotal 0."""
    ivf = faiss.extract_index_ivf(index)
    real, own = ivf.invlists, ivf.own_invlists
    ntotal, ivf_ntotal = index.ntotal, ivf.ntotal
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False
    ivf.replace_invlists(empty, False)
    index.ntotal = ivf.ntotal = 0
    try:
        yield ivf
    finally:
        ivf.replace_invlists(real, False)
        ivf.own_invlists = own
        index.ntotal, ivf.ntotal = ntotal, ivf_ntotal


def structure_digest(index: faiss.Index) -> str:
    """sha256 of the index serialized without quantizer content and without lists."""
    with placeholder_quantizer(index), without_lists(index):
        return hashlib.sha256(faiss.serialize_index(index).tobytes()).hexdigest()


def has_placeholder_quantizer(index: faiss.Index) -> bool:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.ntotal == 0 and ivf.nlist > 0


def _address(swig_ptr: object) -> int:
    return int(swig_ptr.this) if hasattr(swig_ptr, "this") else int(swig_ptr)


def ondisk_list_table(invlists: faiss.InvertedLists) -> np.ndarray:
    """(nlist, 3) int64 copy of (size, capacity, offset) of an OnDiskInvertedLists.

    A memory-mapped slice (IO_FLAG_MMAP) is an OnDiskInvertedLists whose
    offsets are byte positions in the slice file.  The table is read straight
    from the C++ vector (plain struct of three size_t) instead of one Python
    call per list, which would take seconds per slice at millions of lists.
    """
    od = faiss.downcast_InvertedLists(invlists)
    if not isinstance(od, faiss.OnDiskInvertedLists):
        raise IndexFileError("inverted lists are not memory-mapped/on-disk")
    n = od.lists.size()
    if n == 0:
        return np.zeros((0, 3), dtype=np.int64)
    raw = faiss.rev_swig_ptr(faiss.cast_integer_to_uint8_ptr(_address(od.lists.data())), n * 24)
    table = np.frombuffer(raw, dtype=np.uint64).reshape(n, 3).astype(np.int64)
    # cross-check the layout assumption on a few lists through the public API
    for j in {0, n // 2, n - 1}:
        if od.list_size(j) != table[j, 0]:
            raise IndexFileError("unexpected OnDiskInvertedLists layout in this faiss build")
    return table


IDX_BYTES = 8  # faiss idx_t
