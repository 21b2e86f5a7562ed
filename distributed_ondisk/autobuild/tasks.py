"""The work of one task, the same whether a local loop or a Spark executor runs it.

Each function takes the picklable :class:`BuildContext` (file list, plan, folders)
and one item (a piece, a block, a shard number) and returns something small.
Outputs go to names fixed by the plan (``Workdir.vslice(i, n)``...), written
atomically with a manifest, and a task finding its output complete skips it:
a retried or speculative task rewrites or reuses the same file, never adds a
second copy of its rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.autobuild.inputs import InputFile, read_id_columns, read_rows
from distributed_ondisk.autobuild.mips import augment, max_sq_norm
from distributed_ondisk.autobuild.plan import Piece
from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.kmeans.base import AssignResult
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.trained import load_trained_index
from distributed_ondisk.ondisk.vslice import KIND as VSLICE_KIND
from distributed_ondisk.stages.vslice import (
    DEFAULT_BLOCK_ROWS,
    add_rows,
    omp_threads,
    write_vslice,
)
from distributed_ondisk.workdir import Workdir

log = logging.getLogger(__name__)
ADD_BLOCK_ROWS = DEFAULT_BLOCK_ROWS  # rows added at a time: the vslice stage's block
# the HNSW quantizer's efSearch while adding (k=1): 64 assigns as 128 (the search
# default) did on 200k x 64 (99.999 % the exact nearest centroid) in half the time
ADD_EF_SEARCH = 64


@dataclass(frozen=True)
class BuildContext:
    files: tuple[InputFile, ...]
    pieces: tuple[Piece, ...]
    index_dir: str  # final: trained.index, hslices/, ids/
    temp_dir: str  # vslices/
    nb_hslices: int
    id_columns: tuple[str, ...] = ()
    threads: int = 0  # faiss threads per task (0: faiss's default)
    fault: Callable[[str, int], None] | None = field(default=None, compare=False)
    metric_type: str = "l2"
    max_norm: float | None = None  # "ip": rows get the extra coordinate (see mips.py)
    lists_files: tuple[str, ...] = ()  # shard j's lists file (beside the faiss file j)

    @property
    def index_wd(self) -> Workdir:
        return Workdir.from_arg(self.index_dir)

    @property
    def temp_wd(self) -> Workdir:
        return Workdir.from_arg(self.temp_dir)

    def vslice_path(self, piece_no: int) -> Path:
        return self.temp_wd.vslice(piece_no, len(self.pieces))

    def ids_path(self, piece_no: int) -> Path:
        return self.index_wd.ids(piece_no, len(self.pieces))

    def rows(self, file_no: int, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of a file as the index sees them (augmented for "ip")."""
        x = read_rows(self.files[file_no], a, b)
        return x if self.max_norm is None else augment(x, self.max_norm)

    def piece_rows(self, p: Piece) -> np.ndarray:
        return self.rows(p.file_no, p.a, p.b)


def scan_piece_keeping(
    ctx: BuildContext, item: tuple[int, np.ndarray | None]
) -> tuple[np.ndarray | None, float]:
    """Read a piece once (dimensions, NaN/Inf, nulls checked); returns the rows at the
    given file-local row numbers (sorted; the k-means sample comes back with the scan,
    no second job) and the piece's largest squared norm (for "ip")."""
    piece_no, local = item
    p = ctx.pieces[piece_no]
    x = read_rows(ctx.files[p.file_no], p.a, p.b)
    kept = (
        None
        if local is None
        else np.ascontiguousarray(x[np.asarray(local) - p.a], dtype=np.float32)
    )
    return kept, max_sq_norm(x)


def read_piece_subset(
    ctx: BuildContext, item: tuple[int, np.ndarray], original: bool = False
) -> np.ndarray:
    """Rows of one piece at file-local row numbers (sorted), as indexed (augmented for
    "ip"), or as the user gave them with ``original`` (queries)."""
    piece_no, local = item
    p = ctx.pieces[piece_no]
    lo, hi = int(local[0]), int(local[-1]) + 1
    x = read_rows(ctx.files[p.file_no], lo, hi) if original else ctx.rows(p.file_no, lo, hi)
    return x[np.asarray(local) - lo]


def assign_block(block: np.ndarray, centroids: np.ndarray, threads: int = 0) -> AssignResult:
    """The k-means reduced assignment of one training block (CPU backend)."""
    from distributed_ondisk.kmeans.cpu import CPUAssign
    from distributed_ondisk.kmeans.source import RowSource

    with omp_threads(threads):
        return CPUAssign(RowSource(block), block_rows=len(block) or 1).assign_to(centroids)


def _vslice_params(fingerprint: str, p: Piece, f: InputFile) -> dict[str, Any]:
    return {
        "trained_fingerprint": fingerprint,
        "rows": list(p.id_range),
        "source": {"url": f.url, "rows": [p.a, p.b], "file_rows": f.rows},
        "keep_quantizer": False,
    }


def build_vslice(ctx: BuildContext, piece_no: int) -> dict[str, Any]:
    """Add one piece to a copy of the trained index and write it as vslice ``piece_no``.

    The manifest has what the merge checks (rows, id range, list sizes, region
    checksums, trained fingerprint); a complete one with the same parameters
    is reused as is.
    """
    p = ctx.pieces[piece_no]
    f = ctx.files[p.file_no]
    out = ctx.vslice_path(piece_no)
    out.parent.mkdir(parents=True, exist_ok=True)
    mf.remove_stale_for(out)
    index, fingerprint = load_trained_index(ctx.index_wd.trained)
    params = _vslice_params(fingerprint, p, f)
    if mf.is_complete(out, VSLICE_KIND, params):
        log.info("%s is complete, reused", out)
    else:
        _set_add_ef_search(index)
        with omp_threads(ctx.threads):
            for a in range(p.a, p.b, ADD_BLOCK_ROWS):
                b = min(p.b, a + ADD_BLOCK_ROWS)
                start = p.start + a - p.a
                add_rows(
                    index,
                    ctx.rows(p.file_no, a, b),
                    np.arange(start, start + b - a, dtype=np.int64),
                )
        if index.ntotal != p.rows:
            raise RuntimeError(f"vslice {out} got {index.ntotal} rows, expected {p.rows}")
        write_vslice(
            index,
            out,
            params=params,
            trained_fingerprint=fingerprint,
            id_range=p.id_range,
            data=f.url,
        )
    if ctx.fault is not None:
        ctx.fault("vslice", piece_no)
    return {"piece": piece_no, "rows": p.rows, "bytes": out.stat().st_size}


def _set_add_ef_search(index: faiss.Index) -> None:
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = min(int(quantizer.hnsw.efSearch), ADD_EF_SEARCH)


def remove_stale_ids(ctx: BuildContext) -> list[Path]:
    """Remove the id files of other plans from the ids folder (on the driver, before the
    ids tasks): readers take the whole folder as one parquet dataset, so a file left by
    an earlier build (another piece count, or the ``ids_00000_of_00004`` names of
    versions before the Workdir naming) would add its rows twice."""
    wanted = {ctx.ids_path(i) for i in range(len(ctx.pieces))}
    stale = [p for p in ctx.index_wd.ids_dir.glob("ids_*_of_*.parquet") if p not in wanted]
    for p in stale:
        log.info("removing %s: ids of an earlier build", p)
        p.unlink(missing_ok=True)
    return stale


def write_ids(ctx: BuildContext, piece_no: int) -> int:
    """The id columns of one piece with the index id ``i`` of each row, as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = ctx.pieces[piece_no]
    out = ctx.ids_path(piece_no)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = read_id_columns(ctx.files[p.file_no], p.a, p.b, ctx.id_columns)
    table = table.append_column("i", pa.array(np.arange(*p.id_range, dtype=np.int64)))
    with atomic_path(out) as tmp:
        pq.write_table(table, os.fspath(tmp))
    return table.num_rows


def merge_shard(ctx: BuildContext, shard_no: int) -> dict[str, Any]:
    """Merge every vslice's lists ``shard_no`` of ``nb_hslices`` into one on-disk shard."""
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice

    wd = ctx.index_wd
    wd.hslice_dir.mkdir(parents=True, exist_ok=True)
    inputs = [os.fspath(ctx.vslice_path(i)) for i in range(len(ctx.pieces))]
    out = wd.hslice(shard_no, ctx.nb_hslices)
    lists = Path(ctx.lists_files[shard_no]) if ctx.lists_files else None
    doc = merge_hslice(
        MergeJob(
            inputs,
            out,
            invlists=lists,
            nslice=ctx.nb_hslices,
            slice_no=shard_no,
            trained=wd.trained,
            threads=max(1, ctx.threads),
        )
    )
    if ctx.fault is not None:
        ctx.fault("merge", shard_no)
    return {
        "shard": shard_no,
        "rows": doc.rows,
        "bytes": sum(e.size for e in doc.files.values()),
    }


def knn_piece(
    ctx: BuildContext, piece_no: int, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of one piece (global ids) by the build's metric on the
    original rows, for the ground truth."""
    p = ctx.pieces[piece_no]
    x = read_rows(ctx.files[p.file_no], p.a, p.b)
    ip = ctx.metric_type == "ip"
    with omp_threads(ctx.threads):
        D, I = faiss.knn(
            queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        )
    pad = k - I.shape[1]
    if pad:
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf if ip else np.inf)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    return D, np.where(I >= 0, I + p.start, -1)


def check_vslice_set(ctx: BuildContext, expected_rows: int) -> None:
    """Before merging: one complete vslice per piece, id ranges as planned, no extra rows."""
    total = 0
    for i, p in enumerate(ctx.pieces):
        doc = mf.verify_manifest(ctx.vslice_path(i), VSLICE_KIND, checksums=False)
        if tuple(doc["id_range"]) != p.id_range or int(doc["rows"]) != p.rows:
            raise IndexFileError(
                f"{ctx.vslice_path(i)}: ids {doc['id_range']} ({doc['rows']} "
                f"rows), the plan says {list(p.id_range)}"
            )
        total += int(doc["rows"])
    if total != expected_rows:
        raise IndexFileError(f"the vslices hold {total} rows, expected {expected_rows}")


@dataclass(frozen=True)
class FailOnce:
    """Fault injection for tests: raise after the work of (stage, item) the first time only.

    The marker file records the first attempt, so a retried task (another
    process) succeeds: that is how the tests check that retries duplicate nothing.
    """

    marker_dir: str
    stage: str
    item: int

    def __call__(self, stage: str, item: int) -> None:
        if (stage, item) != (self.stage, self.item):
            return
        marker = Path(self.marker_dir) / f"failed_{stage}_{item}"
        if not marker.exists():
            marker.write_text("first attempt failed on purpose\n")
            raise RuntimeError(f"injected failure of {stage} task {item} (first attempt)")


def sum_assignments(parts: Sequence[AssignResult], k: int, d: int) -> AssignResult:
    total = AssignResult.empty(k, d)
    for part in parts:  # in block order: reproducible
        total.add(part)
    return total
