"""Pure planning of an automatic build: which file rows form which piece (one
piece = one task = one vertical slice), where the held-out evaluation rows
are, which pieces hold a set of sampled rows, and how the training set is cut
into blocks.  No I/O: every rule is unit-tested on plain numbers, and the
local and Spark builds run the *same* plan, which is what makes their
results equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.ranges import split_range


@dataclass(frozen=True)
class Piece:
    """Rows ``[a, b)`` of input file ``file_no``; global ids ``[start, start + b - a)``."""

    piece_no: int
    file_no: int
    a: int
    b: int
    start: int

    @property
    def rows(self) -> int:
        return self.b - self.a

    @property
    def id_range(self) -> tuple[int, int]:
        return self.start, self.start + self.rows


def plan_pieces(
    file_rows: Sequence[int], rows_per_piece: int, limit: int | None = None
) -> list[Piece]:
    """Cut the files (in order) into pieces of at most ``rows_per_piece`` rows.

    Pieces never span two files (a task opens one file) and a file's rows are
    cut into balanced pieces.  Only the first ``limit`` global rows are
    planned (the rest are held out for evaluation).  Global ids are the row
    numbers of the files concatenated in order.
    """
    if rows_per_piece < 1:
        raise InputError(f"rows per piece must be >= 1, got {rows_per_piece}")
    total = int(sum(file_rows))
    limit = total if limit is None else int(limit)
    if not 0 < limit <= total:
        raise InputError(f"cannot index {limit} of {total} rows")
    pieces: list[Piece] = []
    start = 0
    for file_no, n in enumerate(file_rows):
        n = min(int(n), limit - start)
        if n <= 0:
            if start >= limit:
                break
            continue
        parts = -(-n // rows_per_piece)
        for j in range(parts):
            a, b = split_range(n, parts, j)
            pieces.append(Piece(len(pieces), file_no, a, b, start + a))
        start += n
    return pieces


def holdout_rows(total: int, nq: int) -> tuple[int, int]:
    """Global rows ``[total - nq, total)`` are held out as evaluation queries (not indexed).

    The last rows, like ``launch.prepare`` without shuffling: ids stay the
    contiguous ``[0, total - nq)``.  ``nq`` is reduced to leave at least 90 %
    of the rows in the index.
    """
    if total < 1:
        raise InputError("no rows to index")
    nq = max(0, min(int(nq), total // 10))
    return total - nq, total


def rows_by_piece(rows: np.ndarray, pieces: Sequence[Piece]) -> list[tuple[int, np.ndarray]]:
    """Sorted global rows -> ``[(piece_no, local rows within the piece's file)]``,
    in global order, pieces without any of the rows left out."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (
        np.any(rows[1:] <= rows[:-1]) or rows[0] < 0 or rows[-1] >= pieces[-1].id_range[1]
    ):
        raise InputError("rows to read must be sorted, distinct and inside the planned pieces")
    starts = np.array([p.start for p in pieces] + [pieces[-1].id_range[1]], dtype=np.int64)
    cuts = np.searchsorted(rows, starts)
    out = []
    for p, lo, hi in zip(pieces, cuts[:-1], cuts[1:]):
        if hi > lo:
            out.append((p.piece_no, rows[lo:hi] - p.start + p.a))
    return out


def training_blocks(n_train: int, nblocks: int) -> list[tuple[int, int]]:
    """Row ranges of the training set's k-means blocks (one Spark partition each)."""
    nblocks = max(1, min(int(nblocks), n_train))
    return [split_range(n_train, nblocks, j) for j in range(nblocks)]


def rows_per_piece_for(
    total: int, d: int, nb_workers: int, memory_bytes: int, max_rows: int = 1 << 20
) -> int:
    """Rows per piece: enough pieces for every worker (x4, for balance), each small
    enough that a worker's float32 rows stay under an eighth of the memory."""
    by_memory = max(1, memory_bytes // (8 * 4 * d * max(1, nb_workers)))
    by_balance = max(1, -(-total // (4 * max(1, nb_workers))))
    return int(max(1, min(max_rows, by_memory, by_balance)))
