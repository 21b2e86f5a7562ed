"""The ``DatasetAssign`` interface that the k-means loop drives, and what it returns.

A dataset (one process's rows, a GPU's rows, a remote server's slice, or several
of those stacked) answers five questions, as in ``faiss.contrib.clustering``:
how many rows, which dimension, give me these rows, nearest centroid of every
row, and -- the one the loop uses every iteration -- the *reduced* assignment:
per-centroid sums and counts and the objective.  The reduced reply is
O(k*d) whatever the number of rows, which is what keeps the bytes a server
sends per iteration independent of its size (the faiss version returns one id
and one distance per row: 12 bytes per vector per iteration).

This module imports numpy only: the GPU (torch) backend uses it on machines
without faiss.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.rpc.codec import register_message_type

#: Rows per block: bounded memory whatever the size of a slice.
DEFAULT_BLOCK_BYTES = 64 << 20


def block_rows_for(d: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    return max(1, block_bytes // (4 * max(d, 1)))


@register_message_type
@dataclasses.dataclass
class AssignResult:
    """Reduced assignment of a dataset to ``k`` centroids.

    ``sums`` (k, d) float64 and ``counts`` (k,) int64 per centroid, ``objective``
    the sum of squared distances to the nearest centroid (float64 accumulation,
    so adding the results of several shards gives the same value, up to the
    last bits, as one shard holding all rows). ``search_s`` is the time the
    producer spent, for the per-iteration log; ``recomputed`` the rows whose
    distances to every centroid were computed (all of them for Lloyd's
    assignment, fewer with bounds; -1: not said).
    """

    sums: np.ndarray
    counts: np.ndarray
    objective: float
    search_s: float = 0.0
    recomputed: int = -1

    @staticmethod
    def empty(k: int, d: int) -> AssignResult:
        return AssignResult(np.zeros((k, d), np.float64), np.zeros(k, np.int64), 0.0, 0.0, 0)

    def add(self, other: AssignResult) -> AssignResult:
        """In-place sum (shards are always added in the same order: reproducible)."""
        if other.sums.shape != self.sums.shape:
            raise InputError(
                f"cannot add assignments of shapes {other.sums.shape} and " f"{self.sums.shape}"
            )
        self.sums += other.sums
        self.counts += other.counts
        self.objective += float(other.objective)
        self.search_s = max(self.search_s, float(other.search_s))
        # unknown if one part does not say
        both = self.recomputed >= 0 and other.recomputed >= 0
        self.recomputed = self.recomputed + int(other.recomputed) if both else -1
        return self


# The DatasetAssign methods a k-means server exposes (CPU, GPU and sharded datasets alike).
RPC_METHODS = (
    "count",
    "dim",
    "get_subset",
    "perform_search",
    "assign_to",
    "assign_full",
    "assign_accel",
    "select",
    "describe",
)


@runtime_checkable
class DatasetAssign(Protocol):
    """What the k-means loop needs from the training vectors.

    Row numbers are those of the current *view*: all rows, or the subset chosen
    by :meth:`select` (sorted, so a view is the same whatever the sharding).
    """

    def count(self) -> int: ...

    def dim(self) -> int: ...

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        """float32 rows ``indices`` of the view, in that order."""

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(D, I), each (count(), 1): squared distance to and id of the nearest centroid."""

    def assign_to(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> AssignResult: ...

    def assign_full(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """faiss's (I, D, float32 sums) triple, for :class:`FaissCompatAssign`."""

    def select(self, indices: np.ndarray | None) -> int:
        """Restrict the view to these sorted row numbers (None: all rows); returns count()."""


def accelerated(data: object) -> bool:
    """Whether ``data.assign_accel`` skips distances with bounds (:mod:`.accel`);
    a dataset without it is driven with ``assign_to`` (Lloyd's assignment)."""
    return bool(getattr(data, "accelerated", False)) and hasattr(data, "assign_accel")


def check_centroids(centroids: np.ndarray, d: int, where: str = "") -> np.ndarray:
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != d or c.shape[0] < 1:
        raise InputError(f"centroids{where} must have shape (k >= 1, {d}), got {c.shape}")
    return c


def check_weights(weights: np.ndarray | None, n: int, where: str = "") -> np.ndarray | None:
    if weights is None:
        return None
    w = np.ascontiguousarray(weights, dtype=np.float32).ravel()
    if w.shape[0] != n:
        raise InputError(f"weights{where}: {w.shape[0]} values for {n} rows")
    return w


def check_indices(indices: np.ndarray, n: int, where: str = "") -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise InputError(
            f"row indices{where} must be a 1-d integer array, got " f"{idx.dtype} {idx.shape}"
        )
    if idx.size > n:
        # A subset is never larger than the view; more indices (repeats) would let
        # a small request make the server materialise any number of rows.
        raise InputError(f"row indices{where}: {idx.size} indices for a view of {n} rows")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputError(
            f"row indices{where} out of range [0, {n}): " f"min {idx.min()}, max {idx.max()}"
        )
    return idx


def check_selection(indices: np.ndarray, n: int, where: str = "") -> np.ndarray:
    idx = check_indices(indices, n, where)
    if idx.size > 1 and np.any(idx[1:] <= idx[:-1]):
        raise InputError(f"selected rows{where} must be strictly increasing")
    return idx


def imbalance_factor(counts: np.ndarray) -> float:
    """faiss's imbalance factor: k * sum(c^2) / (sum c)^2 (1.0 = perfectly balanced)."""
    c = np.asarray(counts, dtype=np.float64)
    tot = c.sum()
    return float(len(c) * (c * c).sum() / (tot * tot)) if tot > 0 else 0.0
