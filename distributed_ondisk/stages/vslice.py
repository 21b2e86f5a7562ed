"""Vertical slices: rows ``[i0, i1)`` of the data added to a copy of the trained index.

Ids are global row numbers.  Rows are read and added in bounded blocks.  The
bytes of a slice depend only on its rows, not on the block size or thread
count (tested):

* faiss's IVF add appends each vector to its list in input order whatever the
  thread count (each thread owns the lists ``list_no % nt == rank``), so a list
  holds its ids in increasing order;
* but faiss applies the rotation/PCA with sgemm, whose rounding depends on the
  number of rows per call and on the threads (measured: ~half of the rows
  differ in the last bit between block sizes, which changes some SQ codes).
  :func:`transform_rows` therefore applies linear transforms in fixed-shape
  products aligned on global row numbers, then the vectors go to the IVF add
  directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import InputError
from distributed_ondisk.log import Progress
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import placeholder_quantizer, structure_digest, write_index
from distributed_ondisk.ondisk.schema import Counts, VsliceManifest
from distributed_ondisk.ondisk.trained import load_trained_index
from distributed_ondisk.ondisk.transform import transform_rows
from distributed_ondisk.ondisk.vslice import read_layout, region_checksums
from distributed_ondisk.ranges import resolve_range

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class VsliceJob:
    trained: Path
    data: Path
    out: Path
    i0: int | None = None
    i1: int | None = None
    nslice: int | None = None
    slice_no: int | None = None
    block_rows: int = DEFAULT_BLOCK_ROWS
    threads: int = 0  # 0: faiss's default (all cores)
    keep_quantizer: bool = False
    force: bool = False


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads inside the block (0 = leave as is)."""
    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def list_sizes(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    il = ivf.invlists
    return np.fromiter((il.list_size(j) for j in range(ivf.nlist)), dtype=np.int64, count=ivf.nlist)


def add_rows(index: faiss.Index, x: np.ndarray, ids: np.ndarray) -> None:
    """Add rows with ids so that each row's code depends only on the row (and on
    ``ids[0]``, the position used to align the transform's fixed-shape chunks)."""
    first = int(ids[0]) if len(ids) else 0
    inner, xt = transform_rows(index, np.ascontiguousarray(x, dtype=np.float32), first)
    inner.add_with_ids(xt, ids)
    index.ntotal = inner.ntotal


def fill(index: faiss.Index, vf: Any, i0: int, i1: int, block_rows: int) -> None:
    """Add rows [i0, i1) of ``vf`` to ``index`` with ids = row numbers, block by block."""
    with Progress(i1 - i0, f"add rows [{i0}, {i1})", "vec", logger=log) as prog:
        for start, block in vf.iter_blocks(i0, i1, block_rows=block_rows):
            ids = np.arange(start, start + len(block), dtype=np.int64)
            add_rows(index, block, ids)
            prog.update(len(block))


def write_vslice(
    index: faiss.Index,
    out: Path,
    *,
    params: dict[str, Any],
    trained_fingerprint: str,
    id_range: tuple[int, int],
    data: str,
    keep_quantizer: bool = False,
    trained: PathLike | None = None,
) -> VsliceManifest:
    """Write a filled vslice atomically (quantizer replaced by a placeholder unless
    kept), check it reads back with the same structure and list sizes, then write its
    manifest (what the merge verifies); returns the manifest.  Shared by the
    ``make_vslice`` stage and ``build_index``'s tasks."""
    i0, i1 = id_range
    sizes = list_sizes(index)
    structure = structure_digest(index)
    with atomic_path(out) as tmp:
        if keep_quantizer:
            write_index(index, tmp)
        else:
            with placeholder_quantizer(index):
                write_index(index, tmp)
    layout = read_layout(out)
    if layout.structure != structure or not np.array_equal(layout.sizes, sizes):
        raise RuntimeError(f"{out} does not read back as written")  # faiss or disk broken
    m = VsliceManifest(
        params=params,
        regions=region_checksums(layout),
        trained_fingerprint=trained_fingerprint,
        structure=structure,
        rows=i1 - i0,
        id_range=(i0, i1),
        list_sizes=Counts.of(sizes),
        quantizer="kept" if keep_quantizer else "placeholder",
        data=data,
        # where the merge finds the trained index to link shards to
        trained_index=mf.trained_link(trained, trained_fingerprint, out) if trained else None,
    )
    return mf.write_manifest(out, m, {"index": out})


def make_vslice(job: VsliceJob) -> VsliceManifest:
    """Build one vertical slice (skipped when already complete); returns its manifest."""
    from distributed_ondisk.vectors import open_vectors

    if job.block_rows < 1:
        raise InputError(f"block size must be >= 1 row, got {job.block_rows}")
    vf = open_vectors(job.data)
    i0, i1 = resolve_range(vf.n, job.i0, job.i1, job.nslice, job.slice_no, f"{job.data} rows")
    out = Path(job.out)
    mf.remove_stale_for(out)
    index, fingerprint = load_trained_index(job.trained)
    if index.d != vf.d:
        raise InputError(
            f"trained index {job.trained} has dimension {index.d} but data "
            f"{job.data} has {vf.d}"
        )
    params = {
        "trained_fingerprint": fingerprint,
        "rows": [i0, i1],
        "data_rows": vf.n,
        "keep_quantizer": job.keep_quantizer,
    }
    if not job.force and mf.is_complete(out, VsliceManifest, params):
        log.info("%s is complete, skipping (use --force to rebuild)", out)
        return mf.load_manifest(out, VsliceManifest)
    log.info("vslice %s: rows [%d, %d) of %s", out, i0, i1, job.data)
    with omp_threads(job.threads):
        fill(index, vf, i0, i1, job.block_rows)
    if index.ntotal != i1 - i0:
        raise RuntimeError(f"added {index.ntotal} vectors, expected {i1 - i0}")  # a bug
    doc = write_vslice(
        index,
        out,
        params=params,
        trained_fingerprint=fingerprint,
        id_range=(i0, i1),
        data=os.path.abspath(job.data),
        keep_quantizer=job.keep_quantizer,
        trained=job.trained,
    )
    log.info("wrote %s (%d vectors)", out, i1 - i0)
    return doc
