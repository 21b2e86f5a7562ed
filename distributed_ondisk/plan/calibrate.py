"""``plan --calibrate``: short measurements of this machine with the project's own code.

Each measurement runs the code path the model prices (the CPU k-means
backend's ``assign_to``, ``vslice.add_rows``, the HNSW quantizer build,
``merge_hslice``, an RPC round trip of a large array, ``CombinedIndex`` search)
on seeded clustered data, a few seconds each, and turns it into the per-core
rate of :class:`~distributed_ondisk.plan.rates.Rates` at the measured shape.
The best of ``repeat`` runs is kept: on a shared machine the best run is the
one least disturbed by others.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from distributed_ondisk.plan.model import code_size
from distributed_ondisk.plan.rates import DEFAULT_RATES, REF_EF_SEARCH, Rates

log = logging.getLogger(__name__)


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def threads_in_use() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def measure_assign(d: int, k: int = 1024, n: int = 60000, repeat: int = 2) -> float:
    """GFLOP/s per core of the CPU backend's reduced assignment (search + sums)."""
    from distributed_ondisk.datasets import make_clustered
    from distributed_ondisk.kmeans.cpu import CPUAssign
    from distributed_ondisk.kmeans.source import RowSource

    x = make_clustered(n, d, seed=11)
    ds = CPUAssign(RowSource(x))
    c = x[np.random.default_rng(0).choice(n, k, replace=False)]
    t = best_time(lambda: ds.assign_to(c), repeat)
    return 2.0 * n * k * d / t / 1e9 / threads_in_use()


def _trained(x: np.ndarray, nlist: int, encoder: str = "SQ6", sample_rows: int = 20000):
    from distributed_ondisk.stages.train import TrainedIndexConfig, build_trained_index

    cent = x[np.random.default_rng(1).choice(len(x), nlist, replace=False)]
    return build_trained_index(cent, x[:sample_rows], TrainedIndexConfig(encoder=encoder))


def measure_hnsw_build(d: int, nlist: int = 4096, repeat: int = 1) -> float:
    """Centroids per second per core into the HNSW32 quantizer (efConstruction 200)."""
    import faiss

    from distributed_ondisk.datasets import make_clustered
    from distributed_ondisk.stages.train import TrainedIndexConfig

    cfg = TrainedIndexConfig()
    x = make_clustered(nlist, d, n_clusters=200, seed=12)

    def build() -> None:
        q = faiss.IndexHNSWFlat(d, cfg.hnsw_m)
        q.hnsw.efConstruction = cfg.ef_construction
        q.add(x)

    return nlist / best_time(build, repeat) / threads_in_use()


def measure_train(
    d: int, nlist: int = 1024, rows: tuple[int, int] = (10000, 40000), repeat: int = 2
) -> float:
    """Sample rows per second per core of the trained index's encoder training
    (the slope between two sample sizes: the HNSW build cancels out)."""
    from distributed_ondisk.datasets import make_clustered

    x = make_clustered(rows[1], d, seed=16)
    # every row of x[:m] is in the sample (not only the first 20000, as for the other rates)
    t = [best_time(lambda m=m: _trained(x[:m], nlist, sample_rows=m), repeat) for m in rows]
    return (rows[1] - rows[0]) / max(t[1] - t[0], 1e-6) / threads_in_use()


def measure_add(d: int, nlist: int = 1024, n: int = 40000, repeat: int = 2) -> float:
    """Vectors per second per core added by ``vslice.add_rows`` (transform + HNSW + SQ6)."""
    from distributed_ondisk.datasets import make_clustered
    from distributed_ondisk.stages.vslice import add_rows

    x = make_clustered(n, d, seed=13)
    ids = np.arange(n, dtype=np.int64)

    def add() -> None:
        index = _trained(x, nlist)
        t0 = time.perf_counter()
        add_rows(index, x, ids)
        add.t = time.perf_counter() - t0  # type: ignore[attr-defined]

    best = float("inf")
    for _ in range(max(1, repeat)):
        add()
        best = min(best, add.t)  # type: ignore[attr-defined]
    return n / best / threads_in_use()


def measure_merge(
    d: int, nlist: int = 1024, n: int = 200000, repeat: int = 2
) -> tuple[float, float]:
    """(MB/s of lists written, fixed seconds per job) of ``merge_hslice`` from 2 vslices."""
    from distributed_ondisk.datasets import make_clustered
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice
    from distributed_ondisk.stages.train import make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
    from distributed_ondisk.workdir import Workdir

    with tempfile.TemporaryDirectory(prefix="plan-cal-") as tmp:
        wd = Workdir.from_arg(tmp).create()
        x = make_clustered(n, d, seed=14)
        np.save(wd.data(".npy"), x)
        np.save(wd.centroids, x[np.random.default_rng(2).choice(n, nlist, replace=False)])
        make_trained_index(wd.centroids, wd.data(), wd.trained, i0=0, i1=20000)
        for i in range(2):
            make_vslice(VsliceJob(wd.trained, wd.data(), wd.vslice(i, 2), nslice=2, slice_no=i))
        del x
        out = wd.hslice(0, 1)
        # all lists, then an eighth of them: MB/s from the slope, the rest is per-job cost
        t_all = best_time(
            lambda: merge_hslice(MergeJob([str(wd.vslice_dir)], out, force=True)), repeat
        )
        part = wd.hslice(0, 8)
        t_part = best_time(
            lambda: merge_hslice(
                MergeJob([str(wd.vslice_dir)], part, nslice=8, slice_no=0, force=True)
            ),
            repeat,
        )
        nbytes = n * (code_size("SQ6", d) + 8)
        mbps = nbytes * 7 / 8 / max(t_all - t_part, 1e-6) / 1e6
        return mbps, max(t_part - nbytes / 8 / (mbps * 1e6), 0.0)


class _Echo:
    RPC_METHODS = ("blob",)

    def __init__(self, nbytes: int) -> None:
        self.data = np.ones(nbytes // 8, np.float64)

    def blob(self) -> np.ndarray:
        return self.data


def measure_rpc(nbytes: int = 64 << 20, repeat: int = 3) -> float:
    """Payload MB/s of one RPC reply carrying a large float64 array (loopback)."""
    from distributed_ondisk.rpc import Client, Server

    secret = os.urandom(32)
    with (
        Server(_Echo(nbytes), secret=secret).start() as server,
        Client(server.address, secret=secret) as client,
    ):
        client.call("blob")
        return nbytes / best_time(lambda: client.call("blob"), repeat) / 1e6


def measure_search(
    d: int,
    nlist: int = 1024,
    n: int = 100000,
    nq: int = 2000,
    nprobes: tuple[int, ...] = (1, 16, 64),
    repeat: int = 2,
) -> tuple[float, float, dict[int, float]]:
    """(quantization us per query, scan ns per code, QPS per core by nprobe) on an
    in-RAM IVF<nlist>_HNSW32,SQ6 (the same scan code as the on-disk lists)."""
    import faiss

    from distributed_ondisk.datasets import make_clustered, make_queries
    from distributed_ondisk.stages.vslice import add_rows

    x = make_clustered(n, d, seed=15)
    q = make_queries(nq, d, seed=15)
    index = _trained(x, nlist)
    add_rows(index, x, np.arange(n, dtype=np.int64))
    ivf = faiss.extract_index_ivf(index)
    faiss.downcast_index(ivf.quantizer).hnsw.efSearch = REF_EF_SEARCH
    nt = threads_in_use()
    t_quant = best_time(lambda: ivf.quantizer.search(index.chain.at(0).apply(q), 1), repeat)
    qps: dict[int, float] = {}
    scanned: dict[int, float] = {}
    for p in nprobes:
        ivf.nprobe = p
        t = best_time(lambda: index.search(q, 10), repeat)
        qps[p] = nq / t / nt
        scanned[p] = p * n / nlist
    quant_us = t_quant * nt / nq * 1e6
    # least squares of per-query core time on codes scanned, intercept = quantization
    xs = np.array([scanned[p] for p in nprobes])
    ys = np.array([1e6 / qps[p] for p in nprobes])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(nprobes) > 1 else ys[0] / xs[0]
    return quant_us, max(slope, 1e-3) * 1e3, qps


def calibrate(
    d: int = 64, quick: bool = False, base: Rates = DEFAULT_RATES, out: os.PathLike | None = None
) -> tuple[Rates, dict]:
    """Measure every rate (about a minute; ``quick``: a few seconds less accurate)."""
    import platform

    import faiss

    scale = 0.5 if quick else 1.0
    rep = 2 if quick else 3
    t0 = time.perf_counter()
    nlist = 1024
    assign = measure_assign(d, n=int(60000 * scale), repeat=rep)
    hnsw = measure_hnsw_build(d, nlist=int(4096 * scale))
    add = measure_add(d, nlist=nlist, n=int(40000 * scale), repeat=rep)
    train = measure_train(d, nlist=nlist, repeat=rep)
    merge, merge_job = measure_merge(d, nlist=nlist, n=int(400000 * scale), repeat=rep)
    rpc = measure_rpc(repeat=rep + 1)
    quant_us, scan_ns, qps = measure_search(
        d, nlist=nlist, n=int(100000 * scale), nq=int(2000 * scale), repeat=rep
    )
    rates = base.replace(
        assign_gflops_per_core=assign,
        add_vps_per_core=add,
        add_ref_nlist=nlist,
        add_ref_d=d,
        hnsw_build_vps_per_core=hnsw,
        hnsw_ref_nlist=int(4096 * scale),
        hnsw_ref_d=d,
        train_vps_per_core=train,
        merge_mbps=merge,
        merge_job_s=merge_job,
        rpc_mbps=rpc,
        quant_us_per_query=quant_us,
        scan_ns_per_code=scan_ns,
        search_ref_nlist=nlist,
        search_ref_d=d,
        search_ref_code_size=code_size("SQ6", d),
        source=f"calibrated on {platform.node()} ({os.cpu_count()} cores, "
        f"faiss {faiss.__version__}, {time.strftime('%Y-%m-%d %H:%M')})",
    )
    info = {
        "seconds": time.perf_counter() - t0,
        "threads": threads_in_use(),
        "search_qps_per_core": {str(k): v for k, v in qps.items()},
    }
    if out is not None:
        from distributed_ondisk.plan.rates import save_rates

        save_rates(rates, out)
    return rates, info


def describe(rates: Rates, info: dict) -> str:
    qps = ", ".join(f"nprobe {k}: {v:,.0f}" for k, v in info["search_qps_per_core"].items())
    return "\n".join(
        [
            f"calibration ({info['seconds']:.0f} s, {info['threads']} threads): {rates.source}",
            f"  k-means assignment + sums  {rates.assign_gflops_per_core:8.1f} GFLOP/s per core",
            f"  HNSW32 build               {rates.hnsw_build_vps_per_core:8.0f} centroids/s per core",
            (
                f"  add to IVF{rates.add_ref_nlist}_HNSW32,SQ6  {rates.add_vps_per_core:8.0f} "
                f"vectors/s per core (d={rates.add_ref_d})"
            ),
            f"  encoder training           {rates.train_vps_per_core:8.0f} sample rows/s per core",
            (
                f"  merge                      {rates.merge_mbps:8.0f} MB/s per process "
                f"+ {rates.merge_job_s:.2f} s per job"
            ),
            f"  RPC (one connection)       {rates.rpc_mbps:8.0f} MB/s",
            (
                f"  search per core            {qps} QPS (quantize "
                f"{rates.quant_us_per_query:.0f} us, scan {rates.scan_ns_per_code:.1f} ns/code)"
            ),
        ]
    )
