"""Where build_index's k-means runs (the driver, or the workers) and what it costs in
memory, and which rows it will read, so the input scan brings them back."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.loop import fingerprint_rows, sample_rows, seeded_rng

log = logging.getLogger(__name__)
ROW_WORKING_BYTES = 28  # per training row: label int64, distance, one-hot sparse entry


def kmeans_rows_hint(n: int, cfg: Any, on_driver: bool) -> np.ndarray:
    """The global rows ``train_kmeans`` will ask for (its fingerprint rows, and its seeded
    sample when k-means runs on the driver), so the scan brings them back.  Only a
    hint: rows it misses are read by tasks later."""
    rows = fingerprint_rows(n)
    if on_driver:
        sample = sample_rows(n, cfg, seeded_rng(cfg))
        rows = np.arange(n, dtype=np.int64) if sample is None else np.union1d(rows, sample)
    return np.unique(rows)


def kmeans_placement(
    n_train: int, d: int, k: int, memory: int, nb_workers: int, local: bool
) -> tuple[int, bool]:
    """(bytes k-means needs in one process, whether it runs on the driver).

    On the driver it holds the sample and the assignment's working memory
    (labels, distances, the one-hot sums, faiss's distance tiles); autofaiss
    trains there too, and a Spark job per iteration costs more than the
    assignment of any sample that fits.  Otherwise (Spark only) each worker
    holds its share of the blocks plus the same working memory.
    """
    tiles = 4 * 4096 * min(k, 1024)  # faiss's blas distance tile (4096 x 1024 floats)
    driver = n_train * (4 * d + ROW_WORKING_BYTES) + tiles
    if local or driver <= memory // 2:
        need, on_driver = driver, True
    else:
        need = -(-n_train // nb_workers) * (4 * d + ROW_WORKING_BYTES) + tiles
        on_driver = False
    log.info(
        "k-means on %d rows of d=%d: %s, about %.0f MiB per process (half of "
        "current_memory_available: %.0f MiB)",
        n_train,
        d,
        "on the driver" if on_driver else f"over {nb_workers} workers",
        need / 2**20,
        memory / 2**21,
    )
    if need > memory // 2:
        raise InputError(
            f"k-means on {n_train} rows of d={d} needs about "
            f"{need / 2**20:.0f} MiB {'on the driver' if on_driver else 'per worker'}"
            f", over half of current_memory_available ({memory / 2**20:.0f} MiB): "
            "lower max_points_per_centroid or raise the memory"
        )
    return need, on_driver
