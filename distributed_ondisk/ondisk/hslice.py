"""Open horizontal shards read-only, alone or together as one searchable index.

A shard's index file names its lists file relative to the index's own
directory, so shards can be moved (together with their lists files).  faiss
would resolve that name against the process's working directory, so the
index is read with ``IO_FLAG_SKIP_IVF_DATA`` (nothing mapped yet), the name is
resolved here, the size checked (mapping a short file would crash on access
instead of failing), and only then mapped read-only.  Shards are opened with
``IO_FLAG_READ_ONLY`` only: adding ``IO_FLAG_MMAP`` makes faiss 1.15 crash on
``get_ids`` of on-disk lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import IDX_BYTES, read_index, write_index
from distributed_ondisk.ondisk.trained import fingerprint_matches, load_trained_index

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Hslice:
    path: Path
    index: faiss.Index
    invlists: faiss.OnDiskInvertedLists
    list_range: tuple[int, int]
    manifest: dict[str, Any] | None


def open_hslice(path: PathLike, *, require_manifest: bool = True) -> Hslice:
    """Read one shard read-only with its lists file memory-mapped."""
    p = Path(path)
    doc = (
        mf.load_manifest(p, "hslice") if require_manifest or mf.manifest_path(p).exists() else None
    )
    index = read_index(p, faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(index)
    od = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(od, faiss.OnDiskInvertedLists):
        raise IndexFileError(f"{p}: not an on-disk shard (its lists are not OnDiskInvertedLists)")
    data = Path(od.filename)
    if not data.is_absolute():
        data = p.parent / data
    try:
        size = data.stat().st_size
    except OSError as e:
        raise IndexFileError(f"{p}: its lists file {data} is missing or unreadable") from e
    if size < od.totsize:
        raise IndexFileError(f"{p}: lists file {data} has {size} bytes, needs {od.totsize}")
    if doc is not None and doc["files"]["invlists"]["size"] != size:
        raise IndexFileError(f"{p}: lists file {data} size differs from the shard's manifest")
    od.filename = os.fspath(data)
    od.read_only = True
    if od.totsize:
        od.do_mmap()
    lr = tuple(doc["list_range"]) if doc else (0, int(ivf.nlist))
    return Hslice(p, index, od, lr, doc)


def open_hslices(trained: PathLike, hslices: Sequence[PathLike]) -> faiss.Index:
    """The trained index (with its quantizer) searching the lists of all given shards.

    Shards must come from this trained index (fingerprint) and have disjoint
    list ranges; lists no shard covers are empty.  Read-only, zero-copy: each
    list is served by the shard that holds it.
    """
    index, fingerprint = load_trained_index(trained)
    ivf = faiss.extract_index_ivf(index)
    shards = sorted((open_hslice(h) for h in hslices), key=lambda s: s.list_range)
    if not shards:
        raise IndexFileError("no shards given")
    parts: list[faiss.InvertedLists] = []
    matched: dict[str, bool] = {}  # once per fingerprint (a content check is not free)
    pos, ntotal = 0, 0
    for s in shards:
        want = s.manifest["trained_fingerprint"]
        if want not in matched:
            matched[want] = fingerprint_matches(index, fingerprint, want)
        if not matched[want]:
            raise IndexFileError(
                f"{s.path} was built from a different trained index than " f"{trained}"
            )
        a, b = s.list_range
        if a < pos:
            raise IndexFileError(f"{s.path}: lists [{a}, {b}) overlap another shard")
        if a > pos:
            parts.append(faiss.ArrayInvertedLists(a - pos, ivf.code_size))
        parts.append(faiss.SliceInvertedLists(s.invlists, a, b))
        pos = b
        ntotal += s.manifest["rows"]
    if pos < ivf.nlist:
        parts.append(faiss.ArrayInvertedLists(ivf.nlist - pos, ivf.code_size))
    vec = faiss.InvertedListsPtrVector()
    for part in parts:
        vec.push_back(part)
    stacked = faiss.VStackInvertedLists(vec.size(), vec.data())
    ivf.replace_invlists(stacked, False)
    index.ntotal = ivf.ntotal = ntotal
    # the C++ objects do not own each other here: keep them alive with the index
    index.referenced_objects = [shards, parts, vec, stacked]
    return index


KIND = "hslice"


def _relative_invlists_name(index_path: Path, invlists_path: Path) -> str:
    return os.path.relpath(
        os.path.abspath(invlists_path), os.path.dirname(os.path.abspath(index_path))
    )


def write_hslice_index(
    template: Path, out: Path, invlists_path: Path, l0: int, sizes: np.ndarray
) -> None:
    """Write the shard's index file: the slice structure with on-disk lists pointing
    (relatively) at ``invlists_path``, lists outside [l0, l1) empty."""
    from distributed_ondisk.ondisk.indexfile import placeholder_quantizer

    index = read_index(template, faiss.IO_FLAG_MMAP)
    ivf = faiss.extract_index_ivf(index)
    full = np.zeros(ivf.nlist, dtype=np.uint64)
    full[l0 : l0 + len(sizes)] = sizes
    od = faiss.OnDiskInvertedLists(
        ivf.nlist, ivf.code_size, _relative_invlists_name(out, invlists_path)
    )
    od.set_all_lists_sizes(faiss.swig_ptr(full))
    od.totsize = int(full.sum()) * (ivf.code_size + IDX_BYTES)
    ivf.replace_invlists(od, True)  # frees the slice's mapping
    od.this.disown()
    index.ntotal = ivf.ntotal = int(full.sum())
    # lists only: the trained index holds the coarse quantizer once for all shards
    with atomic_path(out) as tmp, placeholder_quantizer(index):
        write_index(index, tmp)
