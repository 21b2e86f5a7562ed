"""The k-means loop over any :class:`DatasetAssign` (in process, GPU, remote, sharded).

Follows faiss's Clustering: at most ``k * max_points_per_centroid`` training
rows (a seeded sample), seeded initial centroids drawn among them, ``niter``
rounds of assign + recompute, empty clusters filled by splitting large ones
with a small symmetric perturbation.  All random draws are on *global* row
numbers from one seeded generator, so the result does not depend on how the
rows are split across servers; the generator's state is checkpointed with the
centroids, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Union

import numpy as np

from distributed_ondisk.errors import InputError, RPCError
from distributed_ondisk.kmeans.base import DatasetAssign, accelerated, imbalance_factor
from distributed_ondisk.kmeans.checkpoint import (
    Checkpoint,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from distributed_ondisk.log import Progress

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
SPLIT_EPS = 1.0 / 1024
FINGERPRINT_ROWS = 16
#: faiss warns below this many training points per centroid; the build's choice of
#: nlist (autobuild) and the plan's checks use the same bound.
MIN_POINTS_PER_CENTROID = 39


@dataclasses.dataclass
class KMeansConfig:
    k: int
    niter: int = 25
    seed: int = 1234
    max_points_per_centroid: int = 256
    #: plain Lloyd assignment (every distance, every iteration) instead of the exact
    #: bounded one (:mod:`.accel`), for comparison and as a fallback
    lloyd: bool = True  # the bounded assignment is opt-in (lloyd=False)

    def validate(self, n: int) -> None:
        if self.k < 1:
            raise InputError(f"k must be >= 1, got {self.k}")
        if self.k > n:
            raise InputError(
                f"k={self.k} is larger than the number of vectors ({n}): " f"need k <= {n}"
            )
        if self.niter < 0:
            raise InputError(f"niter must be >= 0, got {self.niter}")
        if self.max_points_per_centroid < 1:
            raise InputError(
                f"max_points_per_centroid must be >= 1, got " f"{self.max_points_per_centroid}"
            )


@dataclasses.dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 (k, d)
    stats: list  # one dict per iteration
    n_train: int

    @property
    def objective(self) -> float:
        return float(self.stats[-1]["obj"]) if self.stats else float("nan")


def fingerprint_rows(n: int) -> np.ndarray:
    """The evenly spaced rows :func:`data_fingerprint` reads (sorted, distinct)."""
    return np.unique(np.linspace(0, n - 1, FINGERPRINT_ROWS).astype(np.int64))


def data_fingerprint(data: DatasetAssign, n: int, d: int) -> str:
    """sha256 of n, d and a few evenly spaced rows: cheap, and independent of sharding."""
    rows = fingerprint_rows(n)
    h = hashlib.sha256(f"{n} {d}".encode())
    h.update(np.ascontiguousarray(data.get_subset(rows), np.float32).tobytes())
    return h.hexdigest()[:32]


def split_empty_clusters(
    centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> int:
    """Give every empty cluster half of a large one (chosen with probability
    proportional to size - 1), the two centroids pushed apart by +-SPLIT_EPS
    relative.  Modifies ``centroids`` and ``counts``; returns the number of splits."""
    k, d = centroids.shape
    empty = np.flatnonzero(counts == 0)
    fac = np.ones(d, np.float32)
    fac[0::2] += SPLIT_EPS
    fac[1::2] -= SPLIT_EPS
    nsplit = 0
    while len(empty):
        weights = np.maximum(counts - 1, 0).astype(np.float64)
        nnz = int(np.count_nonzero(weights))
        if nnz == 0:
            raise InputError("cannot fill empty clusters: no cluster has 2 or more points")
        take = min(nnz, len(empty))
        donors = rng.choice(k, size=take, p=weights / weights.sum())
        for ci, cj in zip(empty[:take], donors):  # a loop over empty clusters, not vectors
            c = centroids[cj].copy()
            centroids[ci] = c * fac
            centroids[cj] = c / fac
            counts[ci] = counts[cj] // 2
            counts[cj] -= counts[ci]
            nsplit += 1
        empty = empty[take:]
    return nsplit


def seeded_rng(cfg: KMeansConfig) -> np.random.Generator:
    """The generator :func:`train_kmeans` draws its sample, initial centroids and splits from."""
    return np.random.Generator(np.random.PCG64(cfg.seed))


def sample_rows(n: int, cfg: KMeansConfig, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted rows k-means trains on (``k * max_points_per_centroid`` of them, drawn from
    ``rng``), or None when every row is used.  ``train_kmeans`` draws this first from
    :func:`seeded_rng`, so a caller can know the sample before the run (to read it early).
    """
    limit = cfg.k * cfg.max_points_per_centroid
    if n <= limit:
        return None
    # Generator.choice without replacement is O(size) for size << n (no permutation of n).
    return np.sort(rng.choice(n, size=limit, replace=False))


def train_kmeans(
    data: DatasetAssign,
    cfg: KMeansConfig,
    *,
    checkpoint: PathLike | None = None,
    resume: bool = False,
    on_iteration: Callable[[int, np.ndarray], None] | None = None,
) -> KMeansResult:
    """Cluster ``data`` into ``cfg.k`` centroids; see the module docstring."""
    data.select(None)  # a server may still hold the sample of an earlier run
    n, d = int(data.count()), int(data.dim())
    cfg.validate(n)
    if resume and checkpoint is None:
        raise InputError(
            "--resume needs a checkpoint file (--checkpoint or --store_each_iteration)"
        )
    rng = seeded_rng(cfg)
    sample = sample_rows(n, cfg, rng)
    meta = {
        "d": d,
        "n": n,
        "k": cfg.k,
        "seed": cfg.seed,
        "max_points_per_centroid": cfg.max_points_per_centroid,
        "n_train": n if sample is None else len(sample),
        "data_fingerprint": data_fingerprint(data, n, d),
    }
    ckpt = None
    if resume and os.path.exists(checkpoint):  # type: ignore[arg-type]
        ckpt = load_checkpoint(checkpoint)  # type: ignore[arg-type]
        check_resumable(ckpt, meta, checkpoint)  # type: ignore[arg-type]
    elif resume:
        log.warning("no checkpoint at %s yet: starting from the beginning", checkpoint)
    n_train = meta["n_train"]
    if sample is not None:
        log.info(
            "sampling %d of %d vectors (max_points_per_centroid=%d)",
            n_train,
            n,
            cfg.max_points_per_centroid,
        )
        if data.select(sample) != n_train:
            raise RPCError(f"the shards hold {data.count()} selected rows, expected {n_train}")
    if n_train < MIN_POINTS_PER_CENTROID * cfg.k:
        log.warning(
            "only %d training points for %d centroids (faiss suggests >= %d per centroid)",
            n_train,
            cfg.k,
            MIN_POINTS_PER_CENTROID,
        )
    init = rng.choice(n_train, size=cfg.k, replace=False)
    centroids = np.ascontiguousarray(data.get_subset(init), np.float32)
    stats: list = []
    start = 0
    if ckpt is not None:
        centroids, start, stats = ckpt.centroids.copy(), ckpt.iteration, list(ckpt.stats)
        rng.bit_generator.state = ckpt.rng_state
        log.info("resuming from %s after iteration %d", checkpoint, start)
    log.info(
        "clustering %d points in %dD to %d clusters, %d iterations, seed %d",
        n_train,
        d,
        cfg.k,
        cfg.niter,
        cfg.seed,
    )
    # Bounds are a cache on the servers: after a resume the first call rebuilds them
    # with a full assignment, the result is the same either way.
    use_accel = not cfg.lloyd and accelerated(data)
    assign = data.assign_accel if use_accel else data.assign_to  # type: ignore[attr-defined]
    log.info("assignment: %s", "bounded (exact, accelerated)" if use_accel else "Lloyd")
    t_start = time.perf_counter()
    with Progress(max(cfg.niter - start, 0), "k-means", unit="iter") as progress:
        for it in range(start, cfg.niter):
            t0 = time.perf_counter()
            try:
                res = assign(centroids)
            except RPCError as e:
                raise RPCError(f"k-means iteration {it + 1}/{cfg.niter} failed: {e}") from e
            t_search = time.perf_counter() - t0
            counts = np.asarray(res.counts, np.int64).copy()
            if int(counts.sum()) != n_train:
                raise RPCError(
                    f"iteration {it + 1}: the shards assigned {int(counts.sum())} "
                    f"rows, expected {n_train}"
                )
            centroids = (np.asarray(res.sums, np.float64) / np.maximum(counts, 1)[:, None]).astype(
                np.float32
            )
            imbalance = imbalance_factor(counts)
            nsplit = split_empty_clusters(centroids, counts, rng)
            s = {
                "iteration": it,
                "obj": float(res.objective),
                "imbalance": imbalance,
                "nsplit": nsplit,
                "search_s": t_search,
                "time_s": time.perf_counter() - t0,
                # fraction of rows whose distances were all computed (1: Lloyd)
                "recomputed": (
                    float(res.recomputed) / n_train if getattr(res, "recomputed", -1) >= 0 else 1.0
                ),
            }
            stats.append(s)
            log.info(
                "iteration %d (%.2f s, search %.2f s, total %.1f s): objective=%.6g "
                "imbalance=%.3f nsplit=%d recomputed=%.3f",
                it,
                s["time_s"],
                t_search,
                time.perf_counter() - t_start,
                s["obj"],
                imbalance,
                nsplit,
                s["recomputed"],
            )
            if checkpoint is not None:
                save_checkpoint(
                    checkpoint, Checkpoint(centroids, it + 1, rng.bit_generator.state, meta, stats)
                )
            if on_iteration is not None:
                on_iteration(it, centroids)
            progress.update(1)
    return KMeansResult(centroids, stats, n_train)
