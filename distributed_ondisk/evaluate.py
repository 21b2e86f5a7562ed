"""Recall measures: exact ground truth, recall@r, 10-recall@10, the query samples.

* Ground truth is computed by brute force over the database in bounded blocks
  (memory stays ``O(block_rows * d + nq * k)`` however large the database) and
  cached as ``<queries>.gt<k>.ivecs`` next to the queries, with a sidecar
  ``.json`` recording what it was computed from (database path, size, mtime,
  rows, the queries' sha256, k, metric).  A cache whose sidecar does not match
  is recomputed, never reused.
* ``recall@r`` is faiss's "1-recall@r": the fraction of queries whose true
  nearest neighbour is among the first ``r`` results.
* ``10-recall@10`` (:func:`intersection_recall`): the share of the true 10
  nearest found among the first 10 results.

The timed evaluation of the search variants (table, plot, JSON rows) is
:mod:`distributed_ondisk.search.evaluation`.

``python -m distributed_ondisk.evaluate --database DB --queries Q --k 100``
computes (or finds in cache) the ground truth and prints its path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.errors import InputError, VectorFileError
from distributed_ondisk.log import Progress

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
RANKS = (1, 10, 100)
METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}
DEFAULT_BLOCK_ROWS = 1 << 17


def brute_force_knn(
    database: PathLike,
    queries: np.ndarray,
    k: int,
    *,
    metric: str = "l2",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of ``queries`` among the database file's first
    ``rows`` rows (all by default), block by block."""
    from distributed_ondisk.vectors import open_vectors

    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if k < 1 or block_rows < 1:
        raise InputError(f"k and block_rows must be >= 1, got {k}, {block_rows}")
    vf = open_vectors(database)
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    if xq.ndim != 2 or xq.shape[1] != vf.d:
        raise InputError(f"queries have shape {xq.shape} but database {database} has d={vf.d}")
    keep_max = metric == "ip"
    heap = faiss.ResultHeap(len(xq), k, keep_max=keep_max)
    n = vf.n if rows is None else rows
    with Progress(n, f"ground truth over {database}", "vec", logger=log) as prog:
        for start, block in vf.iter_blocks(0, n, block_rows=block_rows):
            kk = min(k, len(block))
            D, I = faiss.knn(xq, block, kk, metric=METRICS[metric])
            heap.add_result(D, np.where(I >= 0, I + start, -1))
            prog.update(len(block))
    heap.finalize()
    return heap.D, heap.I


def ground_truth_path(queries_path: PathLike, k: int) -> Path:
    q = Path(queries_path)
    return q.with_name(f"{q.stem}.gt{k}.ivecs")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(database: Path, queries: Path, k: int, metric: str, rows: int | None) -> dict:
    from distributed_ondisk.vectors import open_vectors

    st = database.stat()
    vf = open_vectors(database)
    return {
        "database": str(database.resolve()),
        "database_size": st.st_size,
        "database_mtime_ns": st.st_mtime_ns,
        "database_rows": vf.n if rows is None else rows,
        "d": vf.d,
        "queries_sha256": _sha256(queries),
        "k": k,
        "metric": metric,
    }


def ground_truth(
    database: PathLike,
    queries_path: PathLike,
    k: int = 100,
    *,
    metric: str = "l2",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    cache: bool = True,
    rows: int | None = None,
) -> np.ndarray:
    """Ids ``(nq, k)`` of the exact neighbours, from the cache when it is still valid."""
    from distributed_ondisk.vectors import read_vectors, write_vectors

    db, qp = Path(database), Path(queries_path)
    gt_path = ground_truth_path(qp, k)
    side = gt_path.with_name(gt_path.name + ".json")
    key = _cache_key(db, qp, k, metric, rows)
    if cache and gt_path.is_file() and side.is_file():
        try:
            recorded = json.loads(side.read_text("utf-8"))
        except (OSError, ValueError):
            recorded = None
        if (
            isinstance(recorded, dict)
            and recorded.get("key") == key
            and recorded.get("sha256") == _sha256(gt_path)
        ):
            log.info("ground truth from cache %s", gt_path)
            return _read_ids(gt_path)
        log.info("ground truth cache %s is stale, recomputing", gt_path)
    _, I = brute_force_knn(db, read_vectors(qp), k, metric=metric, block_rows=block_rows, rows=rows)
    if cache:
        try:
            write_vectors(gt_path, I.astype(np.int32))
            atomic_write_text(
                side,
                json.dumps({"key": key, "sha256": _sha256(gt_path)}, indent=1, sort_keys=True)
                + "\n",
            )
        except OSError as e:  # read-only queries directory: still return the result
            log.warning("cannot cache ground truth next to %s: %s", qp, e)
    return I


def _read_ids(path: PathLike) -> np.ndarray:
    """Ids as exact int64 (a float32 detour loses ids >= 2**24), row headers checked."""
    from distributed_ondisk.vectors import read_ints

    return read_ints(path)


def load_ground_truth(path: PathLike, nq: int) -> np.ndarray:
    gt = _read_ids(path)
    if gt.shape[0] != nq:
        raise VectorFileError(f"{path}: ground truth has {gt.shape[0]} rows for {nq} queries")
    return gt


def recall_at(I: np.ndarray, gt: np.ndarray, ranks: Sequence[int] = RANKS) -> dict[int, float]:
    """1-recall@r for each ``r <= I.shape[1]`` (larger ranks cannot be measured)."""
    if I.shape[0] != gt.shape[0]:
        raise InputError(f"{I.shape[0]} results for {gt.shape[0]} ground-truth rows")
    hit_rank = I == gt[:, :1]
    return {r: float(hit_rank[:, :r].any(axis=1).mean()) for r in ranks if r <= I.shape[1]}


def intersection_recall(I: np.ndarray, gt: np.ndarray, k: int = 10) -> float | None:
    """k-recall@k: the mean fraction of the true k nearest found among the first k
    results (the ANN-benchmarks measure; ``-1`` padding never counts as found).
    None when either side has fewer than k columns.

    Unlike 1-recall@r it is not trivially 1 when the queries are indexed rows (each
    finds itself at distance 0): the other k-1 neighbours must be found too."""
    if I.shape[1] < k or gt.shape[1] < k:
        return None
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(I[:, :k], gt[:, :k]))
    return float(hits) / (k * len(I))


def sample_query_rows(n: int, nq: int, seed: int) -> np.ndarray:
    """``min(nq, n)`` distinct rows of ``n`` (none if ``nq <= 0``), sorted, drawn with
    ``default_rng(seed)``: the queries when nothing is held out (they stay indexed).
    The pipeline's ``prepare`` and ``build_index`` draw the same rows for a seed."""
    nq = max(0, min(int(nq), n))
    return np.sort(np.random.default_rng(seed).choice(n, size=nq, replace=False))


def sample_label(nq: int, seed: int) -> str:
    """The query source of a sample of indexed rows, as reports and infos name it."""
    return f"sample of {nq} indexed rows, seed {seed}"


def holdout_label(nq: int) -> str:
    """The query source of rows held out of the index."""
    return f"{nq} held-out rows"


def parse_int_list(text: str, what: str = "nprobe") -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise InputError(f"{what} {text!r}: expected comma-separated integers") from e
    if not vals or min(vals) < 1:
        raise InputError(f"{what} {text!r}: expected positive integers")
    return vals


def build_parser() -> argparse.ArgumentParser:
    from distributed_ondisk.cli import add_logging_args

    ap = argparse.ArgumentParser(
        prog="python -m distributed_ondisk.evaluate",
        description="compute (or find cached) exact ground truth",
    )
    ap.add_argument("--database", required=True, help="database vectors")
    ap.add_argument("--queries", required=True, help="query vectors")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--metric", choices=sorted(METRICS), default="l2")
    ap.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS)
    add_logging_args(ap)
    return ap


def _main(args: argparse.Namespace) -> int:
    ground_truth(
        args.database, args.queries, args.k, metric=args.metric, block_rows=args.block_rows
    )
    print(ground_truth_path(args.queries, args.k))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from distributed_ondisk.cli import run_main

    return run_main(build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
