"""Seeded synthetic data for tests, benchmarks and ``--test`` modes.

Real embeddings are clustered, and IVF/k-means behave very differently on
clustered data than on uniform noise (list sizes, recall at small nprobe), so
everything here draws from a Gaussian mixture.

Rows are generated in fixed chunks of :data:`CHUNK_ROWS`, each chunk from its own
seed stream, so row ``i`` depends only on ``(seed, d, n_clusters, i)``:
``make_clustered(n)[:m]`` equals ``make_clustered(m)``, and a large file can be
written block by block (:func:`iter_clustered`) with the same rows as the
in-RAM array.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from distributed_ondisk.errors import InputError

CHUNK_ROWS = 1 << 16
#: Distance between cluster centres relative to the per-coordinate noise (std 1).
CENTER_SCALE = 4.0


def _check(n: int, d: int, n_clusters: int) -> None:
    if n < 0:
        raise InputError(f"number of rows must be >= 0, got {n}")
    if d <= 0:
        raise InputError(f"dimension must be > 0, got {d}")
    if n_clusters <= 0:
        raise InputError(f"number of clusters must be > 0, got {n_clusters}")


def cluster_centers(d: int, n_clusters: int, seed: int) -> np.ndarray:
    """The mixture's centres, float64 (n_clusters, d)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return rng.standard_normal((n_clusters, d)) * CENTER_SCALE


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Map float mixture samples to ``dtype``; integer types are affinely rescaled
    (fixed constants, not data-dependent, so chunks stay consistent) and clipped."""
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        shift = 128 if dtype.kind == "u" else 0
        return np.clip(np.rint(x * 8 + shift), info.min, info.max).astype(dtype)
    raise InputError(f"unsupported dtype {dtype} for synthetic data (float or integer)")


def _chunk(centers: np.ndarray, seed: int, c: int, rows: int, stream: int = 1) -> np.ndarray:
    # Labels and noise come from separate streams so that a shorter chunk is an
    # exact prefix of the full one (each stream is consumed sequentially).
    lab = np.random.default_rng(np.random.SeedSequence([seed, stream, c, 0]))
    noise = np.random.default_rng(np.random.SeedSequence([seed, stream, c, 1]))
    labels = lab.integers(0, len(centers), size=rows)
    return centers[labels] + noise.standard_normal((rows, centers.shape[1]))


def iter_clustered(
    n: int, d: int, n_clusters: int = 50, seed: int = 0, dtype: np.dtype | type = np.float32
) -> Iterator[np.ndarray]:
    """Yield the rows of ``make_clustered(n, ...)`` in C-contiguous blocks of at
    most :data:`CHUNK_ROWS` rows (bounded memory for files larger than RAM)."""
    _check(n, d, n_clusters)
    dt = np.dtype(dtype)
    centers = cluster_centers(d, n_clusters, seed)
    for c, start in enumerate(range(0, n, CHUNK_ROWS)):
        yield _cast(_chunk(centers, seed, c, min(CHUNK_ROWS, n - start)), dt)


def make_clustered(
    n: int, d: int, n_clusters: int = 50, seed: int = 0, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """``n`` rows of dimension ``d`` from a seeded mixture of ``n_clusters``
    isotropic Gaussians (noise std 1, centres ~ N(0, CENTER_SCALE^2)).

    Returns a C-contiguous array of ``dtype`` (float32 by default; integer types
    are rescaled by 8, shifted by 128 if unsigned, and clipped: for .bvecs/.*bin tests).
    """
    _check(n, d, n_clusters)
    dt = np.dtype(dtype)
    out = np.empty((n, d), dtype=dt)
    for start, block in zip(range(0, n, CHUNK_ROWS), iter_clustered(n, d, n_clusters, seed, dt)):
        out[start : start + len(block)] = block
    return out


def split_queries(x: np.ndarray, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x`` into (database, queries): ``nq`` distinct random rows become the
    queries and are removed from the database (a query that is also a database row
    makes 1-recall@1 trivially 1).  Both keep ``x``'s row order and are C-contiguous.
    """
    if x.ndim != 2:
        raise InputError(f"expected a 2-D array of vectors, got shape {x.shape}")
    if not 0 <= nq <= len(x):
        raise InputError(f"cannot take {nq} queries from {len(x)} rows (valid: 0..{len(x)})")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    mask = np.zeros(len(x), dtype=bool)
    mask[rng.choice(len(x), size=nq, replace=False)] = True
    return np.ascontiguousarray(x[~mask]), np.ascontiguousarray(x[mask])


def make_queries(
    nq: int, d: int, n_clusters: int = 50, seed: int = 0, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """``nq`` fresh query rows from the same mixture as ``make_clustered(.., seed)``
    (same centres, independent noise), not rows of the database."""
    _check(nq, d, n_clusters)
    centers = cluster_centers(d, n_clusters, seed)
    return _cast(_chunk(centers, seed, 0, nq, stream=2), np.dtype(dtype))
