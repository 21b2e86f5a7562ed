"""Pure planning for the build stages: which rows go to which vertical slice,
which inverted lists go to which horizontal shard, and how a merge walks its
lists in bounded batches.  No I/O here, so every rule is unit-tested directly.
"""

from __future__ import annotations

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.ondisk.indexfile import IDX_BYTES


def plan_merge_batches(
    list_sizes: np.ndarray, code_size: int, max_bytes: int
) -> list[tuple[int, int]]:
    """Cut consecutive lists into batches of at most ``max_bytes`` of entries.

    ``list_sizes`` are the merged sizes of the lists to write, in order;
    returned ranges index into it.  A single list larger than ``max_bytes``
    gets a batch of its own (a merge cannot split one list's codes from its
    ids without a second pass).
    """
    if max_bytes <= 0:
        raise InputError(f"batch size must be positive, got {max_bytes}")
    nbytes = np.asarray(list_sizes, dtype=np.int64) * (code_size + IDX_BYTES)
    batches = []
    start = 0
    acc = 0
    for i, b in enumerate(nbytes.tolist()):
        if acc and acc + b > max_bytes:
            batches.append((start, i))
            start, acc = i, 0
        acc += b
    if start < len(nbytes):
        batches.append((start, len(nbytes)))
    return batches


def plan_merge_reads(
    list_sizes: np.ndarray, nslices: int, code_size: int, piece_bytes: int, pieces_per_read: int
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Read batches of up to ``pieces_per_read * piece_bytes``, each cut into written
    pieces of up to ``piece_bytes``: ``(a, b, [(first, end, nbytes), ...])`` with
    ``[a, b)`` indexing ``list_sizes`` and ``order[first:end]`` the output parts of
    a piece in the batch's :func:`gather_plan` order (list ``j`` of the batch owns
    parts ``2 S j`` to ``2 S (j + 1)``: its codes, then its ids, of all ``S`` slices).
    """
    sizes = np.asarray(list_sizes, dtype=np.int64)
    per_list = 2 * nslices
    out = []
    for a, b in plan_merge_batches(sizes, code_size, pieces_per_read * piece_bytes):
        pieces = [
            (per_list * p, per_list * q, int(sizes[a + p : a + q].sum()) * (code_size + IDX_BYTES))
            for p, q in plan_merge_batches(sizes[a:b], code_size, piece_bytes)
        ]
        out.append((a, b, pieces))
    return out


def list_offsets(list_sizes: np.ndarray, code_size: int) -> np.ndarray:
    """Byte offset of each list in a contiguous on-disk lists file (codes then ids per list),
    plus the total size as the last element."""
    nbytes = np.asarray(list_sizes, dtype=np.int64) * (code_size + IDX_BYTES)
    out = np.zeros(len(nbytes) + 1, dtype=np.int64)
    np.cumsum(nbytes, out=out[1:])
    return out


def gather_plan(sizes: np.ndarray, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    """How a merge batch gathers its output from the slices' bytes.

    The read buffer holds lists ``[la, lb)`` of slice 0 as stored in the slice
    (per list its codes then its ids), then the same lists of slice 1, and so
    on; ``sizes[s, j]`` is the entry count of list ``la + j`` in slice ``s``.
    Returns ``(offsets, order)``: ``offsets`` (int64, parts + 1) cuts the buffer
    into parts in buffer order ``(slice, list, codes|ids)``, and ``order`` lists
    the part numbers in output order ``(list, codes|ids, slice)``: per list all
    slices' codes, then all their ids, the ``OnDiskInvertedLists`` layout.
    Empty parts are kept (zero-length).  ``offsets[2 * L * s]`` is where slice
    ``s``'s bytes start in the buffer.
    """
    n = np.asarray(sizes, dtype=np.int64)
    if n.ndim != 2:
        raise InputError(f"sizes must be (slices, lists), got shape {n.shape}")
    nsl, nl = n.shape
    lengths = np.stack([n * code_size, n * IDX_BYTES], axis=2)  # (S, L, 2)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths.reshape(-1), out=offsets[1:])
    order = (
        np.arange(nsl)[None, None, :] * 2 * nl
        + 2 * np.arange(nl)[:, None, None]
        + np.arange(2)[None, :, None]
    ).reshape(
        -1
    )  # (L, 2, S)
    return offsets, order
