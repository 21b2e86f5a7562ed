"""The planned input rows as a k-means ``DatasetAssign``, over any runner.

``train_kmeans`` draws its seeded uniform sample on global row numbers (all
files concatenated) and calls :meth:`PlannedDataset.select`.  The sample is
cut into fixed blocks, and each iteration sums the reduced assignments of the
blocks in block order, so every placement computes the same sums:

* ``on_driver`` (what autofaiss does, and the local build): the selected rows
  are read by one job of tasks (grouped by piece) and the iterations run in
  this process on all its cores; a Spark job per iteration would cost more
  than the assignment itself for any sample that fits in memory.
* otherwise: each block is read by a task and stays cached on the executors;
  an iteration ships the centroids and brings back one ``AssignResult``
  (O(k*d)) per block.  The driver holds no more than the encoder's rows.

The encoder (and transform) trains on the first ``encoder_rows`` sampled rows
in both placements.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from distributed_ondisk.autobuild.local import LocalRunner
from distributed_ondisk.autobuild.plan import rows_by_piece, training_blocks
from distributed_ondisk.autobuild.tasks import (
    BuildContext,
    assign_block,
    read_piece_subset,
    sum_assignments,
)
from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.base import (
    AssignResult,
    check_centroids,
    check_indices,
    check_selection,
)

log = logging.getLogger(__name__)


class PlannedDataset:
    """All indexed rows (``n``, ``d``); holds at most the selected rows in memory."""

    def __init__(
        self,
        runner: Any,
        ctx: BuildContext,
        n: int,
        d: int,
        nblocks: int = 8,
        on_driver: bool = True,
        encoder_rows: int = 1 << 16,
    ) -> None:
        self.runner, self.ctx = runner, ctx
        self.n, self.d = int(n), int(d)
        self.nblocks = nblocks
        self.on_driver = on_driver
        self.encoder_rows = encoder_rows
        # where the iterations run: this process, or the runner's workers
        self.compute = LocalRunner() if on_driver else runner
        self._cache: tuple[np.ndarray, np.ndarray] | None = None  # prefetched rows
        self.rows: np.ndarray | None = None  # global row numbers of the view
        self.x: np.ndarray | None = None  # their vectors, when held here
        self._handle: Any = None

    def prefetched(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Rows the scan already read (sorted global rows, their vectors): served from
        memory by :meth:`read_global` instead of another job."""
        self._cache = (np.asarray(rows, np.int64), x)

    def read_global(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of sorted distinct global rows, read by the runner's tasks."""
        if self._cache is not None:
            crows, cx = self._cache
            if np.array_equal(rows, crows):
                return cx
            pos = np.searchsorted(crows, rows)
            if (
                len(crows)
                and np.all(pos < len(crows))
                and np.array_equal(crows[np.minimum(pos, len(crows) - 1)], rows)
            ):
                return cx[pos]
            log.info("%d rows not all prefetched: read by tasks", len(rows))
        groups = rows_by_piece(rows, self.ctx.pieces)
        if not groups:
            return np.empty((0, self.d), np.float32)
        parts = self.runner.map(
            functools.partial(read_piece_subset, self.ctx), groups, desc="read training rows"
        )
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def _load(self, rows: np.ndarray) -> None:
        self._release()
        self.rows = rows
        bounds = training_blocks(len(rows), self.nblocks)
        if self.on_driver:
            self.x = self.read_global(rows)
            self._cache = None  # what k-means reads next is in self.x
            self._handle = self.compute.scatter([self.x[a:b] for a, b in bounds])
        else:
            self._handle = self.runner.scatter_read(
                functools.partial(read_rows_block, self.ctx), [rows[a:b] for a, b in bounds]
            )

    def _release(self) -> None:
        if self._handle is not None:
            self.compute.release(self._handle)
        self._handle, self.rows, self.x = None, None, None

    def _ensure_loaded(self) -> None:
        if self._handle is None:  # the view is every row: small enough (n <= k * max_points)
            self._load(np.arange(self.n, dtype=np.int64))

    def count(self) -> int:
        return self.n if self.rows is None else len(self.rows)

    def dim(self) -> int:
        return self.d

    def select(self, indices: np.ndarray | None) -> int:
        if indices is None:
            self._release()
        else:
            self._load(check_selection(indices, self.n))
        return self.count()

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        idx = check_indices(indices, self.count())
        if self.x is not None:
            return self.x[idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        rows = uniq if self.rows is None else self.rows[uniq]
        return self.read_global(rows)[inverse]

    def training_rows(self) -> np.ndarray:
        """The encoder's training rows: the first ``encoder_rows`` rows k-means trained on."""
        self._ensure_loaded()
        m = min(self.count(), self.encoder_rows)
        if self.x is not None:
            return self.x[:m]
        return self.read_global(self.rows[:m])

    def assign_to(self, centroids: np.ndarray, weights: np.ndarray | None = None) -> AssignResult:
        if weights is not None:
            raise InputError("weighted k-means is not supported by build_index")
        c = check_centroids(centroids, self.d)
        self._ensure_loaded()
        fn = functools.partial(_assign, threads=self.compute.task_threads)
        parts = self.compute.map_scattered(fn, self._handle, c)
        return sum_assignments(parts, len(c), self.d)

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise InputError("perform_search is not used by build_index's k-means loop")

    def assign_full(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise InputError("assign_full is not used by build_index's k-means loop")

    def close(self) -> None:
        self._release()
        self._cache = None


def _assign(block: np.ndarray, centroids: np.ndarray, threads: int = 0) -> AssignResult:
    return assign_block(block, centroids, threads)


def read_rows_block(ctx: BuildContext, rows: np.ndarray) -> np.ndarray:
    """One training block (sorted global rows) read by a task, for the executors' cache."""
    parts = [read_piece_subset(ctx, g) for g in rows_by_piece(rows, ctx.pieces)]
    if not parts:
        return np.empty((0, ctx.files[0].d), np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
