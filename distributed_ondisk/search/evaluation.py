"""Timed search evaluation: recall and QPS per nprobe for each way of searching the
shards (in RAM, on disk, on distributed search servers), the table, the JSON rows and
the plot.

:func:`evaluate_search` is what ``combined_index.py`` / ``distributed-ondisk search``
run; ground truth and the recall measures themselves live in
:mod:`distributed_ondisk.evaluate` (the autobuild evaluation shares them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import InputError
from distributed_ondisk.evaluate import (
    RANKS,
    PathLike,
    ground_truth,
    intersection_recall,
    load_ground_truth,
    recall_at,
)

log = logging.getLogger(__name__)
SearchFn = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
DEFAULT_NPROBES = (1, 4, 16, 64)
#: Neighbours of the ground truth computed from a database (enough for R@100).
GT_K = 100


@dataclass
class EvalPoint:
    variant: str
    nprobe: int
    nq: int
    seconds: float
    recall: dict[int, float] = field(default_factory=dict)
    recall_10_at_10: float | None = None

    @property
    def qps(self) -> float:
        return self.nq / self.seconds if self.seconds > 0 else float("inf")


def evaluate(
    variant: str,
    search: SearchFn,
    xq: np.ndarray,
    k: int,
    nprobes: Sequence[int],
    gt: np.ndarray | None = None,
    *,
    warmup: int = 0,
) -> list[EvalPoint]:
    """Time ``search(xq, k, nprobe)`` once per nprobe over the whole batch, with recall."""
    points = []
    for nprobe in nprobes:
        if warmup:
            search(xq[:warmup], k, nprobe)
        t0 = time.perf_counter()
        _, I = search(xq, k, nprobe)
        dt = time.perf_counter() - t0
        points.append(
            EvalPoint(
                variant,
                int(nprobe),
                len(xq),
                dt,
                recall_at(I, gt) if gt is not None else {},
                intersection_recall(I, gt) if gt is not None else None,
            )
        )
    return points


def format_table(points: Sequence[EvalPoint], ranks: Sequence[int] = RANKS) -> str:
    head = f"{'variant':<14} {'nprobe':>6} {'QPS':>10} " + " ".join(
        f"{'R@' + str(r):>7}" for r in ranks
    )
    head += f" {'10-R@10':>8}"
    rows = [head]
    for p in points:
        rec = " ".join(f"{p.recall[r]:7.4f}" if r in p.recall else f"{'-':>7}" for r in ranks)
        inter = f"{p.recall_10_at_10:8.4f}" if p.recall_10_at_10 is not None else f"{'-':>8}"
        rows.append(f"{p.variant:<14} {p.nprobe:>6} {p.qps:>10.0f} {rec} {inter}")
    return "\n".join(rows)


def report_rows(
    points: Sequence[EvalPoint], queries_label: str | None = None
) -> list[dict[str, Any]]:
    """The points as ``search_report.json`` records them (launch/report.py reads them)."""
    return [
        {
            "variant": p.variant,
            "nprobe": p.nprobe,
            "nq": p.nq,
            "seconds": p.seconds,
            "qps": p.qps,
            "recall": p.recall,
            "recall_10_at_10": p.recall_10_at_10,
            **({"queries": queries_label} if queries_label else {}),
        }
        for p in points
    ]


def plot_curves(points: Sequence[EvalPoint], path: PathLike, title: str = "") -> None:
    """recall@1/@10 vs nprobe and QPS vs recall@10, one curve per variant, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants: dict[str, list[EvalPoint]] = {}
    for p in points:
        variants.setdefault(p.variant, []).append(p)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in variants.items():
        pts = sorted(pts, key=lambda p: p.nprobe)
        x = [p.nprobe for p in pts]
        for r, style in ((1, "--"), (10, "-")):
            if all(r in p.recall for p in pts):
                ax1.plot(x, [p.recall[r] for p in pts], style, marker="o", label=f"{name} R@{r}")
        if all(10 in p.recall for p in pts):
            ax2.plot([p.recall[10] for p in pts], [p.qps for p in pts], marker="o", label=name)
            for p in pts:
                ax2.annotate(str(p.nprobe), (p.recall[10], p.qps), fontsize=7)
    ax1.set(xscale="log", xlabel="nprobe", ylabel="recall", title="recall vs nprobe")
    ax2.set(
        yscale="log",
        xlabel="recall@10",
        ylabel="queries per second",
        title="QPS vs recall@10 (labels: nprobe)",
    )
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@dataclass
class SearchEvaluation:
    """What :func:`evaluate_search` measured, and the index it measured."""

    points: list[EvalPoint]
    ntotal: int
    nshards: int
    nlist: int
    nq: int
    k: int
    threads: int
    recall_measured: bool

    def summary(self) -> str:
        return (
            f"{self.ntotal} vectors in {self.nshards} shard(s), nlist {self.nlist}, "
            f"{self.nq} queries, k={self.k}, {self.threads} threads"
        )

    def text(self) -> str:
        """The summary line, the table, and a note when there was no ground truth."""
        lines = [self.summary(), format_table(self.points)]
        if not self.recall_measured:
            lines.append("(no --gt or --database: recall not measured)")
        return "\n".join(lines)

    def plot(self, path: PathLike) -> None:
        plot_curves(self.points, path, title=f"{self.ntotal} vectors, nlist {self.nlist}")


def evaluate_search(
    shards: Sequence[str],
    queries: PathLike,
    *,
    k: int = 10,
    nprobes: Sequence[int] = DEFAULT_NPROBES,
    trained: PathLike | None = None,
    ef_search: int | None = None,
    gt: PathLike | None = None,
    database: PathLike | None = None,
    database_rows: int | None = None,
    in_ram: bool = False,
    servers: Sequence[str] = (),
    secret: bytes | None = None,
) -> SearchEvaluation:
    """Search the horizontal shards as one index (on disk; also an in-RAM copy with
    ``in_ram``, and the distributed search servers ``servers``) once per nprobe.

    Recall is measured against ``gt`` (ids file), else against brute force over the
    first ``database_rows`` rows of ``database`` (cached next to the queries), else
    not at all.  Points are in the order in-RAM, on-disk, distributed.
    """
    import faiss

    from distributed_ondisk.search.combined import CombinedIndex
    from distributed_ondisk.vectors import read_vectors

    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    ci = CombinedIndex(shards, trained=trained)
    xq = read_vectors(queries)
    if xq.shape[1] != ci.d:
        raise InputError(f"queries {queries} have d={xq.shape[1]}, the index has d={ci.d}")
    gt_ids = None
    if gt:
        gt_ids = load_ground_truth(gt, len(xq))
    elif database:
        metric = "ip" if ci.keep_max else "l2"
        gt_ids = ground_truth(database, queries, GT_K, metric=metric, rows=database_rows)
    ef = ef_search

    def on_disk(x: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        return ci.search(x, k, nprobe=nprobe, ef_search=ef)

    points = evaluate("on-disk", on_disk, xq, k, nprobes, gt_ids)
    if in_ram:
        ram = ci.to_ram()  # held: the IVF extracted from it is owned by it
        ram_ivf = faiss.extract_index_ivf(ram)

        def in_ram_search(x: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
            params = faiss.SearchParametersIVF(
                nprobe=nprobe,
                quantizer_params=(faiss.SearchParametersHNSW(efSearch=ef) if ef else None),
            )
            return ram_ivf.search(ci.transform(x), k, params=params)

        points = evaluate("in-RAM", in_ram_search, xq, k, nprobes, gt_ids) + points
    if servers:
        from distributed_ondisk.search.client import DistributedSearchClient

        # the trained index found (and checked) above: no need to fetch it from a server
        with DistributedSearchClient(
            list(servers), secret=secret, trained=str(ci.trained_path)
        ) as client:

            def distributed(x: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
                return tuple(client.search(x, k, nprobe=nprobe, ef_search=ef))

            points += evaluate("distributed", distributed, xq, k, nprobes, gt_ids)
    return SearchEvaluation(
        points,
        ci.ntotal,
        len(ci.shards),
        ci.nlist,
        len(xq),
        k,
        faiss.omp_get_max_threads(),
        gt_ids is not None,
    )
