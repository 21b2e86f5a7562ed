"""Vertical slices: rows ``[i0, i1)`` of the data added to a copy of the trained index.

Ids are global row numbers.  Rows are read and added in bounded blocks.  The
result is deterministic: faiss's IVF add appends each vector to its list in
input order whatever the thread count (each thread owns the lists
``list_no % nt == rank``), so a list holds its ids in increasing order and a
rerun writes the same bytes (tested).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import faiss
import numpy as np

from distributed_ondisk import manifest as mf
from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.build.plan import resolve_range
from distributed_ondisk.build.slicefile import read_layout, region_checksums
from distributed_ondisk.build.structure import placeholder_quantizer, structure_digest
from distributed_ondisk.build.trained_index import load_trained_index
from distributed_ondisk.errors import InputError
from distributed_ondisk.log import Progress

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
KIND = "vslice"
DEFAULT_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class VsliceJob:
    trained: Path
    data: Path
    out: Path
    i0: Optional[int] = None
    i1: Optional[int] = None
    nslice: Optional[int] = None
    slice_no: Optional[int] = None
    block_rows: int = DEFAULT_BLOCK_ROWS
    threads: int = 0                 # 0: faiss's default (all cores)
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
    return np.fromiter((il.list_size(j) for j in range(ivf.nlist)), dtype=np.int64,
                       count=ivf.nlist)


def fill(index: faiss.Index, vf: Any, i0: int, i1: int, block_rows: int) -> None:
    """Add rows [i0, i1) of ``vf`` to ``index`` with ids = row numbers, block by block."""
    with Progress(i1 - i0, f"add rows [{i0}, {i1})", "vec", logger=log) as prog:
        for start, block in vf.iter_blocks(i0, i1, block_rows=block_rows):
            ids = np.arange(start, start + len(block), dtype=np.int64)
            index.add_with_ids(block, ids)
            prog.update(len(block))


def make_vslice(job: VsliceJob) -> dict[str, Any]:
    """Build one vertical slice (skipped when already complete); returns its manifest."""
    from distributed_ondisk.vectors import open_vectors

    if job.block_rows < 1:
        raise InputError(f"block size must be >= 1 row, got {job.block_rows}")
    vf = open_vectors(job.data)
    i0, i1 = resolve_range(vf.n, job.i0, job.i1, job.nslice, job.slice_no, "rows")
    out = Path(job.out)
    mf.remove_stale_for(out)
    index, fingerprint = load_trained_index(job.trained)
    if index.d != vf.d:
        raise InputError(f"trained index {job.trained} has dimension {index.d} but data "
                         f"{job.data} has {vf.d}")
    params = {"trained_fingerprint": fingerprint, "rows": [i0, i1], "data_rows": vf.n,
              "keep_quantizer": job.keep_quantizer}
    if not job.force and mf.is_complete(out, KIND, params):
        log.info("%s is complete, skipping (use --force to rebuild)", out)
        return mf.load_manifest(out, KIND)
    log.info("vslice %s: rows [%d, %d) of %s", out, i0, i1, job.data)
    with omp_threads(job.threads):
        fill(index, vf, i0, i1, job.block_rows)
    if index.ntotal != i1 - i0:
        raise InputError(f"added {index.ntotal} vectors, expected {i1 - i0}")
    sizes = list_sizes(index)
    structure = structure_digest(index)
    with atomic_path(out) as tmp:
        if job.keep_quantizer:
            faiss.write_index(index, os.fspath(tmp))
        else:
            with placeholder_quantizer(index):
                faiss.write_index(index, os.fspath(tmp))
    layout = read_layout(out)
    if layout.structure != structure or not np.array_equal(layout.sizes, sizes):
        raise InputError(f"internal: {out} does not read back as written")
    doc = mf.write_manifest(out, KIND, {"index": out}, params=params,
                            regions=region_checksums(layout),
                            trained_fingerprint=fingerprint, structure=structure,
                            rows=i1 - i0, id_range=[i0, i1], list_sizes=mf.encode_counts(sizes),
                            quantizer="kept" if job.keep_quantizer else "placeholder",
                            data=os.path.abspath(job.data))
    log.info("wrote %s (%d vectors)", out, i1 - i0)
    return doc
