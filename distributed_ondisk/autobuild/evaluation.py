"""Recall of the finished index on held-out rows, against brute force over the
indexed rows (computed by the runner's tasks, one piece each, merged in a heap)."""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Sequence

import faiss
import numpy as np

from distributed_ondisk.autobuild.inputs import InputFile, read_rows
from distributed_ondisk.autobuild.tasks import BuildContext, knn_piece
from distributed_ondisk.evaluate import recall_at

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


def brute_force(runner: Any, ctx: BuildContext, queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    parts = runner.map(functools.partial(knn_piece, ctx, queries=queries, k=k),
                       [p.piece_no for p in ctx.pieces], desc="ground truth")
    heap = faiss.ResultHeap(len(queries), k, keep_max=ctx.metric_type == "ip")
    for D, I in parts:
        heap.add_result(np.ascontiguousarray(D), np.ascontiguousarray(I))
    heap.finalize()
    return heap.D, heap.I


def measure_recall(index: Any, runner: Any, ctx: BuildContext, queries: np.ndarray,
                   nlist: int, nprobes: Sequence[int] = NPROBES) -> dict[str, Any]:
    """recall@1/@10 and QPS at a few nprobe (those <= nlist) on ``queries``."""
    if len(queries) == 0:
        return {"nq": 0, "note": "no held-out queries (eval_queries=0 or too few rows)"}
    t0 = time.perf_counter()
    _, gt = brute_force(runner, ctx, queries, K)
    gt_s = time.perf_counter() - t0
    points = []
    for nprobe in [p for p in nprobes if p <= nlist] or [nlist]:
        t0 = time.perf_counter()
        _, I = index.search(queries, K, nprobe=nprobe)
        dt = time.perf_counter() - t0
        r = recall_at(I, gt, (1, K))
        points.append({"nprobe": nprobe, "recall@1": r[1], "recall@10": r[K],
                       "qps": len(queries) / dt if dt > 0 else None})
        log.info("nprobe %d: recall@1 %.4f recall@10 %.4f", nprobe, r[1], r[K])
    return {"nq": len(queries), "k": K, "ground_truth_s": gt_s, "points": points,
            "queries": "held-out rows: the last rows of the inputs, not indexed"}
