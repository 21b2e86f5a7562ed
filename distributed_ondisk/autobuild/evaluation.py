"""Recall of the finished index, against brute force over every indexed row
(computed by the runner's tasks, one piece each, merged in a heap).

The queries (:func:`choose_queries`) are, by default, a seeded sample of the
indexed rows themselves, as autofaiss measures: nothing is left out of the
index, and a query finds itself at distance 0 (so 1-recall@1 counts finding
the query's own row).  With ``eval_holdout`` they are the last rows of the
inputs, which are then not indexed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from distributed_ondisk.autobuild.inputs import InputFile, read_rows
from distributed_ondisk.autobuild.plan import rows_by_piece
from distributed_ondisk.autobuild.tasks import BuildContext, knn_piece, read_piece_subset
from distributed_ondisk.evaluate import (
    holdout_label,
    intersection_recall,
    recall_at,
    sample_label,
    sample_query_rows,
)

log = logging.getLogger(__name__)
NPROBES = (1, 4, 16, 64)
K = 10


def read_global_range(files: Sequence[InputFile], a: int, b: int) -> np.ndarray:
    """Global rows ``[a, b)`` of the files concatenated (the held-out queries)."""
    parts, pos = [], 0
    d = next(f.d for f in files if f.rows)
    for f in files:
        lo, hi = max(a, pos), min(b, pos + f.rows)
        if lo < hi:
            parts.append(read_rows(f, lo - pos, hi - pos))
        pos += f.rows
    return np.concatenate(parts) if parts else np.empty((0, d), np.float32)


def choose_queries(
    runner: Any,
    ctx: BuildContext,
    files: Sequence[InputFile],
    n: int,
    total: int,
    nq: int,
    seed: int,
    holdout: bool,
) -> tuple[np.ndarray, str]:
    """(query vectors as the user gave them, the label naming where they come from)."""
    if holdout:
        return read_global_range(files, n, total), holdout_label(total - n)
    rows = sample_query_rows(n, nq, seed)
    if len(rows) == 0:
        return np.empty((0, next(f.d for f in files if f.rows)), np.float32), "none"
    parts = runner.map(
        functools.partial(read_piece_subset, ctx, original=True),
        rows_by_piece(rows, ctx.pieces),
        desc="read queries",
    )
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), sample_label(
        len(rows), seed
    )


def brute_force(
    runner: Any, ctx: BuildContext, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    parts = runner.map(
        functools.partial(knn_piece, ctx, queries=queries, k=k),
        [p.piece_no for p in ctx.pieces],
        desc="ground truth",
    )
    heap = faiss.ResultHeap(len(queries), k, keep_max=ctx.metric_type == "ip")
    for D, I in parts:
        heap.add_result(np.ascontiguousarray(D), np.ascontiguousarray(I))
    heap.finalize()
    return heap.D, heap.I


def measure_recall(
    index: Any,
    runner: Any,
    ctx: BuildContext,
    queries: np.ndarray,
    nlist: int,
    source: str,
    nprobes: Sequence[int] = NPROBES,
) -> dict[str, Any]:
    """1-recall@1 and 10-recall@10 and QPS at a few nprobe (those <= nlist) on
    ``queries`` (``source``: their label, recorded with the figures)."""
    if len(queries) == 0:
        return {
            "nq": 0,
            "queries": source,
            "note": "no queries (eval_queries=0 or too few rows to hold out)",
        }
    t0 = time.perf_counter()
    _, gt = brute_force(runner, ctx, queries, K)
    gt_s = time.perf_counter() - t0
    points = []
    for nprobe in [p for p in nprobes if p <= nlist] or [nlist]:
        t0 = time.perf_counter()
        _, I = index.search(queries, K, nprobe=nprobe)
        dt = time.perf_counter() - t0
        r = recall_at(I, gt, (1, K))
        inter = intersection_recall(I, gt, K)
        points.append(
            {
                "nprobe": nprobe,
                "recall@1": r[1],
                "recall@10": r[K],
                f"{K}-recall@{K}": inter,
                "qps": len(queries) / dt if dt > 0 else None,
            }
        )
        log.info("nprobe %d: recall@1 %.4f recall@10 %.4f", nprobe, r[1], r[K])
    out = {
        "nq": len(queries),
        "k": K,
        "ground_truth_s": gt_s,
        "points": points,
        "queries": source,
        "ground_truth": "exact, brute force over every indexed row",
        "definitions": {
            "recall@r": "1-recall@r: the true nearest row is in the first r " "results",
            f"{K}-recall@{K}": f"share of the true "
            f"{K} nearest rows found in the first {K} results",
        },
    }
    if source.startswith("sample"):
        out["note"] = (
            "each query is an indexed row and finds itself at distance 0 (as "
            "autofaiss measures): recall@1 counts finding the query's own row"
        )
    else:
        out["note"] = "the queries are not in the index"
    return out
