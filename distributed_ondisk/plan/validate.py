"""Predicted vs measured: run the real pipeline stages on this machine and price them.

For each size, calibrate (quick) and then run, right after, the library calls
the pipeline scripts make -- k-means (``train_kmeans`` over the CPU backend),
``make_trained_index``, ``make_vslice`` for each vslice, ``merge_hslice`` for
each hslice, and a ``CombinedIndex`` search over the on-disk shards -- timing
each stage, and compare with :func:`~distributed_ondisk.plan.model.make_plan`
for a 1-node cluster of this machine's threads.  Calibrating next to the
measurement keeps both under the same load when other work shares the cores.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from distributed_ondisk.plan.calibrate import calibrate, threads_in_use
from distributed_ondisk.plan.model import Cluster, Settings, Workload, make_plan
from distributed_ondisk.plan.rates import Rates

log = logging.getLogger(__name__)
STAGES = ("k-means", "trained index", "vslices", "merge (hslices)", "search")


@dataclasses.dataclass
class Size:
    n: int
    d: int
    nlist: int
    niter: int = 10
    nvslices: int = 2
    nhslices: int = 2
    nq: int = 2000
    nprobe: int = 16


DEFAULT_SIZES = (Size(100_000, 32, 256), Size(400_000, 32, 512), Size(1_600_000, 32, 1024))
QUICK_SIZES = (Size(20_000, 32, 64), Size(40_000, 32, 128), Size(80_000, 32, 256))


@dataclasses.dataclass
class Row:
    size: Size
    stage: str
    predicted_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        return self.predicted_s / self.measured_s if self.measured_s > 0 else float("inf")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(size: Size, root: Path, seed: int = 0) -> dict[str, float]:
    """Run every stage once on seeded clustered data; seconds per stage."""
    from distributed_ondisk.datasets import iter_clustered, make_queries
    from distributed_ondisk.kmeans.cpu import CPUAssign
    from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
    from distributed_ondisk.kmeans.source import RowSource
    from distributed_ondisk.search.combined import CombinedIndex
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice
    from distributed_ondisk.stages.train import make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
    from distributed_ondisk.vectors import VectorWriter
    from distributed_ondisk.workdir import Workdir

    wd = Workdir.from_arg(root).create()
    data = wd.data(".fvecs")
    with VectorWriter(data, size.d) as w:
        for block in iter_clustered(size.n, size.d, n_clusters=100, seed=seed):
            w.append(block)
    t: dict[str, float] = {}

    def kmeans() -> None:
        res = train_kmeans(CPUAssign(RowSource(data)), KMeansConfig(size.nlist, size.niter, seed))
        np.save(wd.centroids, res.centroids)

    t["k-means"] = _timed(kmeans)
    t["trained index"] = _timed(
        lambda: make_trained_index(wd.centroids, data, wd.trained, i0=0, i1=min(size.n, 200_000))
    )
    t["vslices"] = _timed(
        lambda: [
            make_vslice(
                VsliceJob(
                    wd.trained, data, wd.vslice(i, size.nvslices), nslice=size.nvslices, slice_no=i
                )
            )
            for i in range(size.nvslices)
        ]
    )
    t["merge (hslices)"] = _timed(
        lambda: [
            merge_hslice(
                MergeJob(
                    [str(wd.vslice_dir)],
                    wd.hslice(j, size.nhslices),
                    nslice=size.nhslices,
                    slice_no=j,
                )
            )
            for j in range(size.nhslices)
        ]
    )
    q = make_queries(size.nq, size.d, n_clusters=100, seed=seed)
    index = CombinedIndex(
        [wd.hslice(j, size.nhslices) for j in range(size.nhslices)], trained=wd.trained
    )
    t["search"] = _timed(lambda: index.search(q, 10, nprobe=size.nprobe))
    return t


def predict(size: Size, rates: Rates, threads: int) -> dict[str, float]:
    w = Workload(
        n=size.n,
        d=size.d,
        fmt="fvecs",
        nlist=size.nlist,
        niter=size.niter,
        train_rows=200_000,
        nq=size.nq,
        nprobe=size.nprobe,
        k=10,
    )
    c = Cluster(nodes=1, cores=threads, ram_gb=16, disk_gb=100, remote=False)
    p = make_plan(w, c, Settings(1, size.nvslices, size.nhslices, 1), rates)
    return {name: s.wall_s for name, s in zip(STAGES, p.stages)}


def validate(
    sizes=DEFAULT_SIZES, workroot: Path | None = None, quick_cal: bool = True
) -> tuple[list[Row], list[Rates]]:
    rows: list[Row] = []
    cals: list[Rates] = []
    with tempfile.TemporaryDirectory(prefix="plan-validate-", dir=workroot) as tmp:
        for i, size in enumerate(sizes):
            rates, _ = calibrate(d=size.d, quick=quick_cal)
            cals.append(rates)
            measured = measure(size, Path(tmp) / f"s{i}")
            predicted = predict(size, rates, threads_in_use())
            rows += [Row(size, st, predicted[st], measured[st]) for st in STAGES]
            log.info(
                "size %d: %s",
                size.n,
                {s: (round(predicted[s], 2), round(measured[s], 2)) for s in STAGES},
            )
    return rows, cals


def format_rows(rows: list[Row]) -> str:
    out = [
        "| n | d | nlist | stage | predicted s | measured s | predicted/measured |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.size.n:,} | {r.size.d} | {r.size.nlist} | {r.stage} | "
            f"{r.predicted_s:.2f} | {r.measured_s:.2f} | {r.ratio:.2f} |"
        )
    return "\n".join(out)
