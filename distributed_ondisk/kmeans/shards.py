"""Several datasets seen as one (rows of shard 0, then shard 1, ...), and an adapter
that lets ``faiss.contrib.clustering.kmeans`` drive any of our datasets.

Row numbers of the stack are global: a sorted global selection maps to each
shard's local selection, so the same seed picks the same vectors whatever the
number of shards.  Reduced results are added in shard order (reproducible).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.base import (
    RPC_METHODS,
    AssignResult,
    DatasetAssign,
    accelerated,
    check_centroids,
    check_indices,
    check_selection,
    check_weights,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard_name(shard: object) -> str:
    return str(getattr(shard, "name", None) or repr(shard))


class ShardedAssign:
    """Stack of datasets; calls them in parallel threads when ``parallel`` (remote
    shards), one after the other otherwise (in-process shards already use all cores)."""

    RPC_METHODS = RPC_METHODS

    def __init__(self, shards: Sequence[DatasetAssign], parallel: bool = True) -> None:
        if not shards:
            raise InputError("no shards to cluster")
        self.shards = list(shards)
        self.parallel = parallel and len(self.shards) > 1
        self._pool = ThreadPoolExecutor(len(self.shards)) if self.parallel else None
        dims = self._map(lambda s: int(s.dim()))
        if len(set(dims)) != 1:
            detail = ", ".join(f"{shard_name(s)}: d={d}" for s, d in zip(self.shards, dims))
            raise InputError(
                f"the shards' vectors differ in dimension ({detail}); every "
                "server must serve the same dimension"
            )
        self.d = dims[0]
        #: assign_accel: bounded on the shards that can, Lloyd's on the others
        self.accelerated = any(accelerated(s) for s in self.shards)
        self._refresh_counts()

    def _map(self, fn: Callable[[DatasetAssign], T]) -> list[T]:
        if self._pool is None:
            return [fn(s) for s in self.shards]
        return list(self._pool.map(fn, self.shards))

    def _refresh_counts(self) -> None:
        self.counts = [int(c) for c in self._map(lambda s: s.count())]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def count(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> dict:
        return {
            "backend": "sharded",
            "shards": [shard_name(s) for s in self.shards],
            "d": self.d,
            "count": self.count(),
            "accelerated": self.accelerated,
        }

    def dim(self) -> int:
        return self.d

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        idx = check_indices(indices, self.count())
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), self.d), np.float32)
        for j, s in enumerate(self.shards):
            mine = np.flatnonzero(shard_of == j)
            if len(mine):
                out[mine] = s.get_subset(idx[mine] - self.offsets[j])
        return out

    def select(self, indices: np.ndarray | None) -> int:
        if indices is None:
            self._map(lambda s: s.select(None))
        else:
            idx = check_selection(indices, self.count())
            cuts = np.searchsorted(idx, self.offsets)
            parts = {
                id(s): idx[cuts[j] : cuts[j + 1]] - self.offsets[j]
                for j, s in enumerate(self.shards)
            }
            self._map(lambda s: s.select(parts[id(s)]))
        self._refresh_counts()
        return self.count()

    def _split(self, weights: np.ndarray | None) -> dict[int, np.ndarray | None]:
        w = check_weights(weights, self.count())
        return {
            id(s): None if w is None else w[self.offsets[j] : self.offsets[j + 1]]
            for j, s in enumerate(self.shards)
        }

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = check_centroids(centroids, self.d)
        parts = self._map(lambda s: s.perform_search(c))
        return (
            np.concatenate([np.asarray(D).reshape(-1, 1) for D, _ in parts]),
            np.concatenate([np.asarray(I).reshape(-1, 1) for _, I in parts]),
        )

    def assign_to(self, centroids: np.ndarray, weights: np.ndarray | None = None) -> AssignResult:
        c = check_centroids(centroids, self.d)
        w = self._split(weights)
        parts = self._map(lambda s: s.assign_to(c, w[id(s)]))
        total = AssignResult.empty(len(c), self.d)
        for p in parts:
            total.add(p)
        return total

    def assign_accel(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> AssignResult:
        c = check_centroids(centroids, self.d)
        w = self._split(weights)

        def one(s: DatasetAssign) -> AssignResult:
            if accelerated(s):
                return s.assign_accel(c, w[id(s)])  # type: ignore[attr-defined]
            return s.assign_to(c, w[id(s)])

        total = AssignResult.empty(len(c), self.d)
        for p in self._map(one):
            total.add(p)
        return total

    def assign_full(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = check_centroids(centroids, self.d)
        w = self._split(weights)
        parts = self._map(lambda s: s.assign_full(c, w[id(s)]))
        sums = np.zeros((len(c), self.d), np.float64)
        for _, _, s in parts:
            sums += s
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            sums.astype(np.float32),
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for s in self.shards:
            if hasattr(s, "close"):
                s.close()


class FaissCompatAssign:
    """Our dataset with faiss.contrib's interface: ``assign_to`` returns (I, D, sums).

    ``faiss.contrib.clustering.kmeans(k, FaissCompatAssign(ds))`` runs the
    reference loop over our CPU, sharded or remote datasets (and so pays its
    12 bytes per vector per iteration; our loop uses the reduced call).
    """

    def __init__(self, ds: DatasetAssign) -> None:
        self.ds = ds

    def count(self) -> int:
        return self.ds.count()

    def dim(self) -> int:
        return self.ds.dim()

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self.ds.get_subset(np.asarray(indices))

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ds.perform_search(centroids)

    def assign_to(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.ds.assign_full(centroids, weights)
