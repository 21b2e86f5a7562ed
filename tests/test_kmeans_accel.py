"""The exact accelerated (bounded) assignment: same result as Lloyd's, fewer distances."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans.accel import group_centroids, n_groups
from distributed_ondisk.kmeans.cpu import CPUAssign
from distributed_ondisk.kmeans.loop import KMeansConfig, split_empty_clusters, train_kmeans
from distributed_ondisk.kmeans.shards import ShardedAssign
from distributed_ondisk.kmeans.source import RowSource


def lloyd_steps(ds: CPUAssign, x: np.ndarray, k: int, niter: int, seed: int = 0):
    """Drive assign_to and assign_accel with the same centroids; yield both results."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(niter):
        ref, acc = ds.assign_to(c), ds.assign_accel(c)
        yield ref, acc
        counts = ref.counts.copy()
        c = (ref.sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        split_empty_clusters(c, counts, rng)


@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_bounded_equals_lloyd_every_iteration(offset: float) -> None:
    # offset: rows away from the origin (norms > distances) widen the float slack
    x = make_clustered(6000, 24, n_clusters=150, seed=3) + np.float32(offset)
    ds = CPUAssign(RowSource(x), nthreads=1)
    fractions = []
    for ref, acc in lloyd_steps(ds, x, 64, 12):
        np.testing.assert_array_equal(acc.counts, ref.counts)
        np.testing.assert_allclose(acc.sums, ref.sums, rtol=1e-6, atol=1e-3)
        assert abs(acc.objective / ref.objective - 1) < 1e-4
        assert ref.recomputed == len(x)
        fractions.append(acc.recomputed / len(x))
    assert fractions[0] == 1.0  # the first call has no bounds
    if offset == 0.0:
        assert min(fractions[4:]) < 0.2, fractions  # bounds prune once centroids settle


def test_far_from_origin_bounds_refuse_to_prune() -> None:
    """Norms 1000x the distances: float32 Lloyd's own rounding is as large as the gaps
    between centroids (its assignments are float ties), so the slack keeps nearly every
    row for recomputation instead of trusting bounds finer than the arithmetic."""
    x = make_clustered(3000, 24, n_clusters=80, seed=3) + np.float32(1000)
    ds = CPUAssign(RowSource(x), nthreads=1)
    for ref, acc in lloyd_steps(ds, x, 32, 5):
        assert acc.recomputed > 0.9 * len(x)
        assert abs(acc.objective / ref.objective - 1) < 1e-3


def test_bounded_exact_for_any_centroid_sequence() -> None:
    """Bounds refer to the previous call's centroids, whatever they were: jumps, a
    shuffled order, a repeat, a view change (select) are all answered exactly."""
    x = make_clustered(3000, 16, n_clusters=60, seed=5)
    ds = CPUAssign(RowSource(x), nthreads=1)
    rng = np.random.default_rng(1)
    c = x[rng.choice(len(x), 40, replace=False)].copy()
    seqs = [c, c, c + 0.5, c[rng.permutation(40)], c * 0.9, x[:40].copy(), c]
    for cc in seqs:
        ref, acc = ds.assign_to(cc), ds.assign_accel(cc)
        np.testing.assert_array_equal(acc.counts, ref.counts)
    sel = np.arange(0, 3000, 3)
    ds.select(sel)
    ref, acc = ds.assign_to(c), ds.assign_accel(c)
    np.testing.assert_array_equal(acc.counts, ref.counts)
    assert acc.recomputed == len(sel)  # a new view: full pass
    w = rng.random(len(sel)).astype(np.float32)
    ref, acc = ds.assign_to(c, w), ds.assign_accel(c, w)
    np.testing.assert_allclose(acc.sums, ref.sums, rtol=1e-5, atol=1e-3)


def test_one_group_when_bounds_memory_is_tiny() -> None:
    assert n_groups(4096, 5_000_000, 2 << 30)[0] >= 100  # the default: ~100 groups for 5M
    assert n_groups(4096, 1000, 1)[0] == 1
    x = make_clustered(2000, 8, n_clusters=40, seed=2)
    ds = CPUAssign(RowSource(x), nthreads=1, bound_bytes=1)
    for ref, acc in lloyd_steps(ds, x, 30, 6):
        np.testing.assert_array_equal(acc.counts, ref.counts)


def test_groups_are_balanced() -> None:
    c = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    labels = group_centroids(c, 100)
    assert np.bincount(labels, minlength=100).max() == 10
    labels = group_centroids(c[:995], 100)
    assert np.bincount(labels, minlength=100).max() == 10


def test_train_kmeans_bounded_vs_lloyd_and_sharded() -> None:
    x = make_clustered(8000, 16, n_clusters=200, seed=7)
    cfg = {"k": 50, "niter": 10, "seed": 11, "max_points_per_centroid": 100}
    lloyd = train_kmeans(CPUAssign(RowSource(x), 1), KMeansConfig(**cfg, lloyd=True))
    acc = train_kmeans(CPUAssign(RowSource(x), 1), KMeansConfig(**cfg, lloyd=False))
    shards = ShardedAssign(
        [CPUAssign(RowSource(x, a, b), 1) for a, b in ((0, 3000), (3000, 8000))], parallel=False
    )
    sh = train_kmeans(shards, KMeansConfig(**cfg, lloyd=False))
    for s_l, s_a, s_s in zip(lloyd.stats, acc.stats, sh.stats):
        assert abs(s_a["obj"] / s_l["obj"] - 1) < 1e-4
        assert abs(s_s["obj"] / s_l["obj"] - 1) < 1e-4
    assert all(s["recomputed"] == 1.0 for s in lloyd.stats)
    assert acc.stats[-1]["recomputed"] < 1.0
    np.testing.assert_allclose(acc.centroids, lloyd.centroids, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sh.centroids, lloyd.centroids, rtol=1e-4, atol=1e-4)


def test_resume_rebuilds_bounds(tmp_path) -> None:
    """A run stopped after 4 iterations and resumed in a fresh dataset (no bounds: one
    full pass) ends on the uninterrupted run's centroids, bit for bit."""
    x = make_clustered(5000, 12, n_clusters=100, seed=9)
    full = train_kmeans(CPUAssign(RowSource(x), 1), KMeansConfig(40, 9, 3, lloyd=False))
    ck = tmp_path / "ck.npz"
    train_kmeans(CPUAssign(RowSource(x), 1), KMeansConfig(40, 4, 3, lloyd=False), checkpoint=ck)
    resumed = train_kmeans(
        CPUAssign(RowSource(x), 1), KMeansConfig(40, 9, 3, lloyd=False), checkpoint=ck, resume=True
    )
    assert resumed.stats[4]["recomputed"] == 1.0
    np.testing.assert_array_equal(resumed.centroids, full.centroids)


@pytest.mark.integration
def test_remote_servers_answer_assign_accel(tmp_path) -> None:
    pytest.importorskip("faiss")
    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers

    x = make_clustered(6000, 16, n_clusters=150, seed=4)
    path = tmp_path / "x.npy"
    np.save(path, x)
    cfg = {"k": 40, "niter": 8, "seed": 2}
    local = train_kmeans(CPUAssign(RowSource(x), 1), KMeansConfig(**cfg, lloyd=True))
    with LocalServers(str(path), len(x), 2) as servers:
        ds = connect_servers(servers.addresses, secret=servers.secret, timeout=60)
        try:
            assert ds.accelerated and all(s.accelerated for s in ds.shards)
            acc = train_kmeans(ds, KMeansConfig(**cfg, lloyd=False))
            lloyd = train_kmeans(ds, KMeansConfig(**cfg, lloyd=True))
        finally:
            ds.close()
    assert acc.stats[-1]["recomputed"] < 1.0 and lloyd.stats[-1]["recomputed"] == 1.0
    for s_a, s_l in zip(acc.stats, local.stats):
        assert abs(s_a["obj"] / s_l["obj"] - 1) < 1e-4
    np.testing.assert_allclose(acc.centroids, local.centroids, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lloyd.centroids, local.centroids, rtol=1e-5, atol=1e-5)


def test_cli_lloyd_flag(tmp_path) -> None:
    pytest.importorskip("faiss")
    from distributed_ondisk.kmeans.cli import main as cli_main

    x = make_clustered(3000, 8, n_clusters=60, seed=6)
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for name, extra in (("lloyd", ["--lloyd"]), ("accel", ["--accel", "--bound_gb", "0.01"])):
        out = tmp_path / f"{name}.npy"
        argv = ["--indata", str(tmp_path / "x.npy"), "--k", "20", "--niter", "6", "--nt", "1"]
        assert cli_main([*argv, "--out", str(out), *extra]) == 0
        outs[name] = np.load(out)
    np.testing.assert_allclose(outs["accel"], outs["lloyd"], rtol=1e-4, atol=1e-4)
    assert cli_main(["--indata", str(tmp_path / "x.npy"), "--k", "4", "--bound_gb", "0"]) == 2
