"""The torch backend: on a torch CPU device wherever torch is installed, on CUDA
when a GPU is present.  No faiss needed (the GPU machine has none)."""
from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans import KMeansConfig, RowSource, ShardedAssign, train_kmeans

torch = pytest.importorskip("torch", reason="torch is not installed: the torch k-means "
                                            "backend cannot be tested here")
from distributed_ondisk.kmeans.gpu import TorchAssign, make_dataset  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


@pytest.fixture(scope="module")
def x():
    return make_clustered(5000, 24, n_clusters=200, seed=8)


def brute(x, c):
    d2 = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d2.min(1), d2.argmin(1)


def check_against_brute(ds, x, c):
    res = ds.assign_to(c)
    D, I = brute(x, c)
    assert (res.counts != np.bincount(I, minlength=len(c))).sum() <= 2   # fp32 near-ties
    assert res.objective == pytest.approx(D.sum(), rel=1e-5)
    Dp, Ip = ds.perform_search(c)
    assert Ip.shape == (len(x), 1) and (Ip.ravel() != I).sum() <= 2
    I3, D3, sums = ds.assign_full(c)
    np.testing.assert_array_equal(I3, Ip.ravel())
    ref = np.zeros((len(c), x.shape[1]))
    np.add.at(ref, I3, x.astype(np.float64))
    np.testing.assert_allclose(sums, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("resident", [False, True])
def test_torch_cpu_matches_brute_force(x, resident):
    c = x[::131][:30].copy()
    check_against_brute(TorchAssign(RowSource(x), "cpu", block_rows=700, resident=resident),
                        x, c)


def test_torch_cpu_loop_matches_float64_and_shards(x):
    cfg = KMeansConfig(40, niter=5, seed=4, max_points_per_centroid=80)
    r32 = train_kmeans(TorchAssign(RowSource(x), "cpu"), cfg)
    r64 = train_kmeans(TorchAssign(RowSource(x), "cpu", dtype=torch.float64), cfg)
    sh = ShardedAssign([TorchAssign(RowSource(x, a, b), "cpu", resident=True)
                        for a, b in [(0, 1234), (1234, 5000)]], parallel=False)
    r_sh = train_kmeans(sh, cfg)
    for r in (r64, r_sh):
        np.testing.assert_allclose(r.centroids, r32.centroids, rtol=1e-4, atol=1e-4)
        assert r.objective == pytest.approx(r32.objective, rel=1e-5)


def test_select_drops_resident_copy(x):
    ds = TorchAssign(RowSource(x), "cpu", resident=True)
    c = x[:10].copy()
    full = ds.assign_to(c)
    assert ds.select(np.arange(0, 5000, 2)) == 2500
    half = ds.assign_to(c)
    assert half.counts.sum() == 2500 and full.counts.sum() == 5000


@pytest.mark.gpu
@cuda
def test_cuda_matches_brute_force_and_cpu(x):
    c = x[::131][:30].copy()
    ds = TorchAssign(RowSource(x), "cuda:0")
    check_against_brute(ds, x, c)
    assert ds._blocks is not None     # the slice stayed resident after the first pass
    cfg = KMeansConfig(40, niter=5, seed=4, max_points_per_centroid=80)
    r_gpu = train_kmeans(make_dataset(RowSource(x), None), cfg)
    r_ref = train_kmeans(TorchAssign(RowSource(x), "cpu", dtype=torch.float64), cfg)
    np.testing.assert_allclose(r_gpu.centroids, r_ref.centroids, rtol=1e-4, atol=1e-4)
    assert r_gpu.objective == pytest.approx(r_ref.objective, rel=1e-5)


def test_no_gpu_explicit_request_is_refused(x):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal cannot be observed")
    from distributed_ondisk.errors import InputError
    with pytest.raises(InputError, match="no CUDA device"):
        make_dataset(RowSource(x), 0)
