"""The torch backend: on torch's CPU device wherever torch is installed (CI
installs the CPU-only wheel, see scripts/test.bash), compared with brute force
and with the faiss CPU backend, in process and in real server processes; on
CUDA when a GPU is present.  The CUDA test needs no faiss (the GPU machine may
have none)."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans import KMeansConfig, RowSource, ShardedAssign, train_kmeans

torch = pytest.importorskip(
    "torch", reason="torch is not installed: the torch k-means " "backend cannot be tested here"
)
from distributed_ondisk.kmeans.backend import choose_backend, make_dataset
from distributed_ondisk.kmeans.gpu import TorchAssign

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
    assert (res.counts != np.bincount(I, minlength=len(c))).sum() <= 2  # fp32 near-ties
    assert res.objective == pytest.approx(D.sum(), rel=1e-5)
    _Dp, Ip = ds.perform_search(c)
    assert Ip.shape == (len(x), 1) and (Ip.ravel() != I).sum() <= 2
    I3, _D3, sums = ds.assign_full(c)
    np.testing.assert_array_equal(I3, Ip.ravel())
    ref = np.zeros((len(c), x.shape[1]))
    np.add.at(ref, I3, x.astype(np.float64))
    np.testing.assert_allclose(sums, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("resident", [False, True])
def test_torch_cpu_matches_brute_force(x, resident):
    c = x[::131][:30].copy()
    check_against_brute(TorchAssign(RowSource(x), "cpu", block_rows=700, resident=resident), x, c)


def test_torch_cpu_loop_matches_float64_and_shards(x):
    cfg = KMeansConfig(40, niter=5, seed=4, max_points_per_centroid=80)
    r32 = train_kmeans(TorchAssign(RowSource(x), "cpu"), cfg)
    r64 = train_kmeans(TorchAssign(RowSource(x), "cpu", dtype=torch.float64), cfg)
    sh = ShardedAssign(
        [
            TorchAssign(RowSource(x, a, b), "cpu", resident=True)
            for a, b in [(0, 1234), (1234, 5000)]
        ],
        parallel=False,
    )
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
    assert ds._blocks is not None  # the slice stayed resident after the first pass
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


# -- the torch backend against the faiss CPU backend ------------------------------------
# Same data, same centroids, same DatasetAssign calls: the assignments agree except at
# float32 near-ties, so counts/sums/objective agree to float tolerance, and a whole
# k-means run ends at the same centroids.


@pytest.fixture(scope="module")
def cpu_backend():
    pytest.importorskip("faiss", reason="the faiss CPU backend is the reference here")
    from distributed_ondisk.kmeans.cpu import CPUAssign

    return CPUAssign


def check_same_assignment(ds, ref, c):
    _, I = ds.perform_search(c)
    _, Iref = ref.perform_search(c)
    assert (I.ravel() != Iref.ravel()).sum() <= 2  # fp32 near-ties only
    a, b = ds.assign_to(c), ref.assign_to(c)
    assert np.abs(a.counts - b.counts).sum() <= 4
    assert a.objective == pytest.approx(b.objective, rel=1e-5)
    same = a.counts == b.counts  # a tie moves a row between two centroids' sums
    np.testing.assert_allclose(a.sums[same], b.sums[same], rtol=1e-5, atol=1e-3)
    w = np.random.default_rng(2).random(ds.count()).astype(np.float32)
    aw, bw = ds.assign_to(c, w), ref.assign_to(c, w)
    np.testing.assert_allclose(aw.sums[same], bw.sums[same], rtol=1e-5, atol=1e-3)
    I3, D3, sums3 = ds.assign_full(c)
    J3, E3, tums3 = ref.assign_full(c)
    assert (I3 != J3).sum() <= 2
    np.testing.assert_allclose(D3, E3, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sums3[same], tums3[same], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("nthreads", [None, 1])
def test_torch_cpu_matches_faiss_cpu_backend(x, cpu_backend, nthreads):
    c = x[::97][:50].copy()
    ds = TorchAssign(RowSource(x), "cpu", block_rows=900, nthreads=nthreads)
    ref = cpu_backend(RowSource(x), nthreads, block_rows=900)
    check_same_assignment(ds, ref, c)
    sub = np.arange(0, len(x), 3)
    assert ds.select(sub) == ref.select(sub) == len(sub)
    np.testing.assert_array_equal(ds.get_subset(np.arange(10)), ref.get_subset(np.arange(10)))
    check_same_assignment(ds, ref, c)


def test_torch_cpu_kmeans_matches_faiss_cpu_kmeans(x, cpu_backend):
    cfg = KMeansConfig(40, niter=6, seed=5, max_points_per_centroid=80)
    r_torch = train_kmeans(make_dataset(RowSource(x), -2, backend="torch"), cfg)
    r_cpu = train_kmeans(cpu_backend(RowSource(x)), cfg)
    np.testing.assert_allclose(r_torch.centroids, r_cpu.centroids, rtol=1e-4, atol=1e-4)
    assert r_torch.objective == pytest.approx(r_cpu.objective, rel=1e-5)


@pytest.mark.integration
def test_torch_cpu_backend_in_server_processes(x, cpu_backend, tmp_path):
    """distributed_kmeans.py --server --backend torch --gpu -2: real processes over RPC."""
    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers

    path = tmp_path / "x.npy"
    np.save(path, x)
    cfg = KMeansConfig(40, niter=4, seed=6, max_points_per_centroid=80)
    with LocalServers(
        str(path), len(x), 2, nthreads=1, gpu=-2, extra_args=["--backend", "torch"]
    ) as servers:
        data = connect_servers(servers.addresses, secret=servers.secret, wait_s=120)
        try:
            assert [s.describe()["backend"] for s in data.shards] == ["torch:cpu"] * 2
            remote = train_kmeans(data, cfg)
        finally:
            data.close()
    ref = train_kmeans(cpu_backend(RowSource(x)), cfg)
    np.testing.assert_allclose(remote.centroids, ref.centroids, rtol=1e-4, atol=1e-4)
    assert remote.objective == pytest.approx(ref.objective, rel=1e-5)


def test_backend_choice_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU fallbacks cannot be observed")
    from distributed_ondisk.errors import InputError

    assert choose_backend(-2, "torch").devices == ("cpu",)
    assert choose_backend(None, "torch").devices == ("cpu",)  # no GPU asked: CPU device
    with pytest.raises(InputError, match="torch sees no CUDA device"):
        choose_backend(0, "torch")
    with pytest.raises(InputError, match="--backend must be one of"):
        choose_backend(None, "jax")


def test_bare_search_and_describe_on_cpu(x):
    ds = TorchAssign(RowSource(x), "cpu", block_rows=1000)
    assert ds.bare_search(x[:20].copy()) is None
    info = ds.describe()
    assert info["backend"] == "torch:cpu" and info["count"] == len(x) and info["d"] == x.shape[1]


def test_one_torch_shard_per_device(x, cpu_backend):
    """The multi-GPU layout (one contiguous shard per device), on two CPU devices."""
    from distributed_ondisk.kmeans.backend import BackendChoice, build_dataset

    ds = build_dataset(BackendChoice("torch", ("cpu", "cpu")), RowSource(x))
    assert isinstance(ds, ShardedAssign) and [s.count() for s in ds.shards] == [2500, 2500]
    c = x[::97][:50].copy()
    check_same_assignment(ds, cpu_backend(RowSource(x)), c)


@pytest.mark.parametrize(
    "nfaiss,ntorch,gpu,backend,expected",
    [
        (0, 0, None, "auto", ("cpu", ())),
        (0, 0, -2, "auto", ("cpu", ())),
        (2, 1, None, "auto", ("faiss-gpu", (-1,))),  # faiss GPU preferred
        (2, 0, 1, "auto", ("faiss-gpu", (1,))),
        (0, 2, None, "auto", ("torch", ("cuda:0", "cuda:1"))),
        (0, 2, -1, "auto", ("torch", ("cuda:0", "cuda:1"))),
        (0, 2, 1, "auto", ("torch", ("cuda:1",))),
        (2, 2, None, "torch", ("torch", ("cuda:0", "cuda:1"))),  # --backend torch over faiss
        (2, 2, -2, "torch", ("torch", ("cpu",))),
        (0, 2, None, "faiss", ("cpu", ())),  # --backend faiss ignores torch
        (1, 0, 0, "faiss", ("faiss-gpu", (0,))),
    ],
)
def test_backend_choice(monkeypatch, nfaiss, ntorch, gpu, backend, expected):
    from distributed_ondisk.kmeans import backend as be

    monkeypatch.setattr(be, "faiss_gpu_count", lambda: nfaiss)
    monkeypatch.setattr(be, "torch_cuda_count", lambda: ntorch)
    choice = be.choose_backend(gpu, backend)
    assert (choice.kind, choice.devices) == expected


@pytest.mark.parametrize(
    "nfaiss,ntorch,gpu,backend,match",
    [
        (2, 0, 2, "auto", "faiss sees only 2 GPU"),
        (0, 2, 2, "auto", "torch sees only 2 GPU"),
        (0, 2, 0, "faiss", "has no GPU support"),
        (0, 0, -3, "auto", "--gpu must be"),
    ],
)
def test_backend_refusals(monkeypatch, nfaiss, ntorch, gpu, backend, match):
    from distributed_ondisk.errors import InputError
    from distributed_ondisk.kmeans import backend as be

    monkeypatch.setattr(be, "faiss_gpu_count", lambda: nfaiss)
    monkeypatch.setattr(be, "torch_cuda_count", lambda: ntorch)
    with pytest.raises(InputError, match=match):
        be.choose_backend(gpu, backend)
