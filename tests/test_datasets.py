"""Synthetic clustered data: deterministic, chunk-consistent, actually clustered."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk import datasets
from distributed_ondisk.datasets import iter_clustered, make_clustered, make_queries, split_queries
from distributed_ondisk.errors import InputError


def test_seeded_and_prefix_consistent(monkeypatch):
    monkeypatch.setattr(datasets, "CHUNK_ROWS", 64)
    x = make_clustered(300, 7, n_clusters=5, seed=3)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (300, 7)
    np.testing.assert_array_equal(x, make_clustered(300, 7, n_clusters=5, seed=3))
    np.testing.assert_array_equal(x[:100], make_clustered(100, 7, n_clusters=5, seed=3))
    np.testing.assert_array_equal(np.concatenate(list(iter_clustered(300, 7, 5, 3))), x)
    assert not np.array_equal(x, make_clustered(300, 7, n_clusters=5, seed=4))


def test_is_clustered():
    x = make_clustered(2000, 16, n_clusters=10, seed=0).astype(np.float64)
    c = datasets.cluster_centers(16, 10, 0)
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    # each point is ~1 noise-std per coordinate from its centre, far from the others
    assert np.median(d2.min(1)) < 2 * 16
    assert np.median(np.sort(d2, 1)[:, 1]) > 10 * 16


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.float64, np.float16])
def test_dtypes(dtype):
    x = make_clustered(50, 4, dtype=dtype)
    assert x.dtype == dtype and x.flags.c_contiguous
    assert len(np.unique(x)) > 10


def test_split_queries_disjoint():
    x = make_clustered(500, 4, seed=1)
    xb, xq = split_queries(x, 20, seed=2)
    assert xb.shape == (480, 4) and xq.shape == (20, 4)
    rows = {r.tobytes() for r in x}
    assert {r.tobytes() for r in xb} | {r.tobytes() for r in xq} == rows
    assert not {r.tobytes() for r in xb} & {r.tobytes() for r in xq}
    with pytest.raises(InputError, match="501 queries from 500 rows"):
        split_queries(x, 501)


def test_queries_same_mixture_not_database_rows():
    x = make_clustered(1000, 8, n_clusters=4, seed=5)
    q = make_queries(30, 8, n_clusters=4, seed=5)
    assert q.shape == (30, 8) and q.dtype == np.float32
    assert not {r.tobytes() for r in q} & {r.tobytes() for r in x}
    d2 = ((q[:, None, :] - datasets.cluster_centers(8, 4, 5)[None]) ** 2).sum(-1)
    assert np.median(d2.min(1)) < 2 * 8


@pytest.mark.parametrize("args", [(-1, 4), (10, 0), (10, 4, 0)])
def test_bad_arguments(args):
    with pytest.raises(InputError):
        make_clustered(*args)
