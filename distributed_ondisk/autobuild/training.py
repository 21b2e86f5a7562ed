"""The planned input rows as a k-means ``DatasetAssign``, over any runner.

``train_kmeans`` draws its seeded uniform sample on global row numbers (all
files concatenated) and calls :meth:`PlannedDataset.select`; the selected rows
are read by tasks (grouped by piece), kept on the driver for the trained
index's encoder, and scattered in fixed blocks to the runner's workers.  Each
iteration maps ``assign_block`` over the blocks and adds the reduced results
in block order, so the local and the Spark build compute the same sums.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import numpy as np

from distributed_ondisk.autobuild.plan import rows_by_piece, training_blocks
from distributed_ondisk.autobuild.tasks import (BuildContext, assign_block, read_piece_subset,
                                                sum_assignments)
from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.base import (AssignResult, check_centroids, check_indices,
                                            check_selection)

log = logging.getLogger(__name__)


class PlannedDataset:
    """All indexed rows (``n``, ``d``); holds at most the selected rows in memory."""

    def __init__(self, runner: Any, ctx: BuildContext, n: int, d: int, nblocks: int = 8,
                 max_rows_in_memory: int = 1 << 22) -> None:
        self.runner, self.ctx = runner, ctx
        self.n, self.d = int(n), int(d)
        self.nblocks = nblocks
        self.max_rows_in_memory = max_rows_in_memory
        self.rows: Optional[np.ndarray] = None       # global row numbers of the view
        self.x: Optional[np.ndarray] = None          # their vectors (float32)
        self._handle: Any = None

    def read_global(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of sorted distinct global rows, read by the runner's tasks."""
        groups = rows_by_piece(rows, self.ctx.pieces)
        if not groups:
            return np.empty((0, self.d), np.float32)
        parts = self.runner.map(functools.partial(read_piece_subset, self.ctx), groups,
                                desc="read training rows")
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def _load(self, rows: np.ndarray) -> None:
        if len(rows) > self.max_rows_in_memory:
            raise InputError(f"k-means would hold {len(rows)} training rows in memory, over "
                             f"the {self.max_rows_in_memory} that current_memory_available "
                             "allows: lower the number of centroids or raise the memory")
        self._release()
        self.rows = rows
        self.x = self.read_global(rows)
        blocks = [self.x[a:b] for a, b in training_blocks(len(rows), self.nblocks)]
        self._handle = self.runner.scatter(blocks)

    def _release(self) -> None:
        if self._handle is not None:
            self.runner.release(self._handle)
        self._handle, self.rows, self.x = None, None, None

    def _ensure_loaded(self) -> None:
        if self.x is None:        # the view is every row: small enough (n <= k * max_points)
            self._load(np.arange(self.n, dtype=np.int64))

    def count(self) -> int:
        return self.n if self.rows is None else len(self.rows)

    def dim(self) -> int:
        return self.d

    def select(self, indices: Optional[np.ndarray]) -> int:
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
        return self.read_global(uniq)[inverse]

    def training_rows(self) -> np.ndarray:
        """The vectors k-means trained on (for the encoder and the transform)."""
        self._ensure_loaded()
        return self.x

    def assign_to(self, centroids: np.ndarray,
                  weights: Optional[np.ndarray] = None) -> AssignResult:
        if weights is not None:
            raise InputError("weighted k-means is not supported by build_index")
        c = check_centroids(centroids, self.d)
        self._ensure_loaded()
        fn = functools.partial(_assign, threads=self.runner.task_threads)
        parts = self.runner.map_scattered(fn, self._handle, c)
        return sum_assignments(parts, len(c), self.d)

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        c = check_centroids(centroids, self.d)
        self._ensure_loaded()
        D, I = faiss.knn(self.x, c, 1)
        return D, I

    def assign_full(self, centroids: np.ndarray, weights: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise InputError("assign_full is not used by build_index's k-means loop")

    def close(self) -> None:
        self._release()


def _assign(block: np.ndarray, centroids: np.ndarray, threads: int = 0) -> AssignResult:
    return assign_block(block, centroids, threads)
