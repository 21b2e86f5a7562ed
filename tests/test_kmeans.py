"""k-means in process: CPU assignment vs brute force, shards vs one dataset, the
faiss.contrib loop over our datasets, sampling/splitting/checkpoints, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans import (
    FaissCompatAssign,
    KMeansConfig,
    RowSource,
    ShardedAssign,
    train_kmeans,
)
from distributed_ondisk.kmeans.base import imbalance_factor
from distributed_ondisk.kmeans.checkpoint import load_checkpoint
from distributed_ondisk.kmeans.cpu import CPUAssign
from distributed_ondisk.kmeans.loop import split_empty_clusters

faiss = pytest.importorskip("faiss", reason="the CPU backend needs faiss")


@pytest.fixture(scope="module")
def x():
    return make_clustered(6000, 16, n_clusters=300, seed=5)


def shards_of(x, cuts, block_rows=None):
    bounds = list(zip([0] + cuts, cuts + [len(x)]))
    return ShardedAssign(
        [CPUAssign(RowSource(x, a, b), block_rows=block_rows) for a, b in bounds], parallel=False
    )


def brute(x, c):
    d2 = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d2.min(1), d2.argmin(1)


def test_assign_to_matches_brute_force(x):
    c = x[::97][:40].copy()
    ds = CPUAssign(RowSource(x), block_rows=1000)  # several blocks
    res = ds.assign_to(c)
    D, I = brute(x, c)
    np.testing.assert_array_equal(res.counts, np.bincount(I, minlength=40))
    sums = np.zeros((40, x.shape[1]))
    np.add.at(sums, I, x.astype(np.float64))
    np.testing.assert_allclose(res.sums, sums, rtol=1e-5, atol=1e-3)
    assert res.objective == pytest.approx(D.sum(), rel=1e-5)
    Dp, Ip = ds.perform_search(c)
    assert Dp.shape == (len(x), 1) and Ip.shape == (len(x), 1)
    np.testing.assert_array_equal(Ip.ravel(), I)


def test_weights_scale_sums(x):
    c = x[:10].copy()
    w = np.linspace(0.5, 2, len(x)).astype(np.float32)
    ds = CPUAssign(RowSource(x), block_rows=700)
    res = ds.assign_to(c, w)
    _, I = brute(x, c)
    sums = np.zeros((10, x.shape[1]))
    np.add.at(sums, I, w[:, None].astype(np.float64) * x)
    np.testing.assert_allclose(res.sums, sums, rtol=1e-5, atol=1e-3)


def test_shards_equal_one_dataset(x):
    c = x[5:55].copy()
    one = CPUAssign(RowSource(x)).assign_to(c)
    many = shards_of(x, [1000, 1001, 4000], block_rows=333).assign_to(c)
    np.testing.assert_array_equal(one.counts, many.counts)
    np.testing.assert_allclose(one.sums, many.sums, rtol=1e-6, atol=1e-4)
    idx = np.array([5999, 0, 1000, 3999, 4000, 17])
    np.testing.assert_array_equal(shards_of(x, [1000, 4000]).get_subset(idx), x[idx])


@pytest.mark.parametrize("mppc", [10_000, 40])  # without and with sampling
def test_one_vs_four_shards_same_centroids(x, mppc):
    cfg = KMeansConfig(50, niter=8, seed=7, max_points_per_centroid=mppc)
    r1 = train_kmeans(CPUAssign(RowSource(x)), cfg)
    r4 = train_kmeans(shards_of(x, [1500, 3000, 4500]), cfg)
    assert r1.n_train == (len(x) if mppc > 200 else 50 * mppc)
    np.testing.assert_allclose(r1.centroids, r4.centroids, rtol=1e-5, atol=1e-5)
    assert r1.objective == pytest.approx(r4.objective, rel=1e-6)


def test_objective_close_to_faiss_kmeans():
    x = make_clustered(30_000, 32, n_clusters=5000, seed=2)
    for seed in (1, 2):
        cfg = KMeansConfig(64, niter=20, seed=seed)
        ours = train_kmeans(CPUAssign(RowSource(x)), cfg).objective
        km = faiss.Kmeans(32, 64, niter=20, seed=seed)
        km.train(x)
        assert ours == pytest.approx(km.obj[-1], rel=0.005)


def test_faiss_contrib_loop_runs_on_our_datasets(x):
    from faiss.contrib.clustering import kmeans

    c_one = kmeans(30, FaissCompatAssign(CPUAssign(RowSource(x))), niter=5, seed=3, verbose=False)
    c_sh = kmeans(30, FaissCompatAssign(shards_of(x, [2000, 4000])), niter=5, seed=3, verbose=False)
    assert c_one.shape == (30, x.shape[1])
    np.testing.assert_allclose(c_one, c_sh, rtol=1e-5, atol=1e-4)


def test_split_empty_clusters_is_seeded_and_keeps_counts():
    c = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    counts = np.array([0, 10, 0, 4])
    c2, n2 = c.copy(), counts.copy()
    assert split_empty_clusters(c, counts, np.random.default_rng(0)) == 2
    split_empty_clusters(c2, n2, np.random.default_rng(0))
    np.testing.assert_array_equal(c, c2)
    assert counts.sum() == 14 and (counts > 0).all()
    assert imbalance_factor(np.array([5, 5])) == 1.0


def test_empty_clusters_are_split_during_training():
    # many duplicate points: initial centroids coincide, clusters empty out
    base = make_clustered(50, 8, n_clusters=5, seed=1)
    x = np.repeat(base, 20, axis=0)
    res = train_kmeans(CPUAssign(RowSource(x)), KMeansConfig(40, niter=4, seed=0))
    assert sum(s["nsplit"] for s in res.stats) > 0
    assert np.isfinite(res.centroids).all()


def test_resume_is_identical_to_uninterrupted(x, tmp_path):
    cfg = KMeansConfig(60, niter=7, seed=11, max_points_per_centroid=60)
    full = train_kmeans(CPUAssign(RowSource(x)), cfg, checkpoint=tmp_path / "a.npz")
    partial = KMeansConfig(60, niter=3, seed=11, max_points_per_centroid=60)
    train_kmeans(CPUAssign(RowSource(x)), partial, checkpoint=tmp_path / "b.npz")
    assert load_checkpoint(tmp_path / "b.npz").iteration == 3
    resumed = train_kmeans(CPUAssign(RowSource(x)), cfg, checkpoint=tmp_path / "b.npz", resume=True)
    np.testing.assert_array_equal(full.centroids, resumed.centroids)
    assert [s["obj"] for s in full.stats] == pytest.approx(
        [s["obj"] for s in resumed.stats], rel=1e-12
    )
    ck = load_checkpoint(tmp_path / "b.npz")
    assert ck.iteration == 7 and ck.meta["k"] == 60


@pytest.mark.parametrize(
    "change,match",
    [
        ({"k": 61}, "k 60"),
        ({"seed": 12}, "seed 11"),
        ({"data": "dim"}, "dimension 16"),
        ({"data": "values"}, "data fingerprint"),
    ],
)
def test_resume_refuses_other_data_or_config(x, tmp_path, change, match):
    ck = tmp_path / "c.npz"
    train_kmeans(CPUAssign(RowSource(x)), KMeansConfig(60, niter=2, seed=11), checkpoint=ck)
    y = x
    if change.get("data") == "dim":
        y = np.ascontiguousarray(x[:, :8])
    elif change.get("data") == "values":
        y = x + 1
    cfg = KMeansConfig(change.get("k", 60), niter=3, seed=change.get("seed", 11))
    with pytest.raises(InputError, match=match):
        train_kmeans(CPUAssign(RowSource(y)), cfg, checkpoint=ck, resume=True)


@pytest.mark.parametrize("k,match", [(0, "k must be >= 1"), (6001, "larger than the number")])
def test_bad_k(x, k, match):
    with pytest.raises(InputError, match=match):
        train_kmeans(CPUAssign(RowSource(x)), KMeansConfig(k, niter=1))


def test_nan_is_refused_naming_the_row(x):
    y = x.copy()
    y[4321, 3] = np.nan
    with pytest.raises(InputError, match="row 4321 contains NaN"):
        train_kmeans(
            CPUAssign(RowSource(y)), KMeansConfig(10, niter=1, max_points_per_centroid=1000)
        )


def test_shards_of_different_dimensions_are_refused(x):
    with pytest.raises(InputError, match="differ in dimension"):
        ShardedAssign([CPUAssign(RowSource(x)), CPUAssign(RowSource(x[:, :8].copy()))])
