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
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import (
    IDX_BYTES,
    ondisk_list_table,
    read_index,
    structure_digest,
    write_index,
)
from distributed_ondisk.ondisk.paths import InputKind
from distributed_ondisk.ondisk.schema import HsliceManifest
from distributed_ondisk.ondisk.trained import fingerprint_matches, load_trained_index
from distributed_ondisk.ranges import find_overlaps

PathLike = Union[str, "os.PathLike[str]"]
KIND = HsliceManifest.KIND
# what the search accepts as shards (a folder: its files with an hslice manifest, any name)
INPUTS = InputKind(
    what="shard",
    kind=KIND,
    folder_glob=None,
    folder_has_none="shard (a file with an hslice manifest)",
    missing="no such shard file or directory",
    none_given="no shard given",
)


@dataclass
class Hslice:
    path: Path
    index: faiss.Index
    invlists: faiss.OnDiskInvertedLists
    list_range: tuple[int, int]
    manifest: HsliceManifest | None


def open_hslice(path: PathLike, *, require_manifest: bool = True) -> Hslice:
    """Read one shard read-only with its lists file memory-mapped."""
    p = Path(path)
    m = (
        mf.load_manifest(p, HsliceManifest)
        if require_manifest or mf.manifest_path(p).exists()
        else None
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
    if m is not None and m.files["invlists"].size != size:
        raise IndexFileError(f"{p}: lists file {data} size differs from the shard's manifest")
    od.filename = os.fspath(data)
    od.read_only = True
    if od.totsize:
        od.do_mmap()
    lr = m.list_range if m is not None else (0, int(ivf.nlist))
    return Hslice(p, index, od, lr, m)


def check_trained(
    index: faiss.Index, file_fp: str, trained: PathLike, wanted: Sequence[tuple[Path, str]]
) -> str:
    """That the trained ``index`` (file ``trained``, sha256 ``file_fp``) is the one every
    part ``(path, fingerprint it records)`` was built from; returns the identity the parts
    record (the file's, or the content fingerprint adopted parts carry)."""
    fps = list(dict.fromkeys(fp for _, fp in wanted))
    for fp in fps:  # once per fingerprint: a content check reads every centroid
        if not fingerprint_matches(index, file_fp, fp):
            path = next(p for p, f in wanted if f == fp)
            raise IndexFileError(
                f"shard {path} was built from another trained index than {trained} "
                f"(it needs fingerprint {fp}, that file has {file_fp})"
            )
    return file_fp if file_fp in fps or not fps else fps[0]


def _entries_in_range(h: Hslice, ivf: faiss.IndexIVF, structure: str) -> int:
    """Check that shard ``h`` fits the trained index (``ivf``, its ``structure`` digest)
    and holds entries in its own list range only; returns how many it holds."""
    l0, l1 = h.list_range
    sivf = faiss.extract_index_ivf(h.index)
    if sivf.nlist < l1 or sivf.code_size != ivf.code_size:
        raise IndexFileError(
            f"{h.path}: nlist {sivf.nlist} / code size {sivf.code_size} do "
            f"not fit lists [{l0}, {l1}) / code size {ivf.code_size}"
        )
    if structure_digest(h.index) != structure:
        raise IndexFileError(
            f"{h.path}: index structure (transform, encoder, nlist) differs "
            "from the trained index's: built from another trained index"
        )
    sizes = ondisk_list_table(h.invlists)[:, 0]
    stray = sizes.copy()
    stray[l0:l1] = 0
    if stray.any():
        bad = int(stray.nonzero()[0][0])
        raise IndexFileError(
            f"{h.path}: holds entries in list {bad}, outside its range [{l0}, {l1})"
        )
    return int(sizes[l0:l1].sum())


def stack_hslices(index: faiss.Index, shards: Sequence[Hslice]) -> int:
    """Make the trained ``index`` search the lists of ``shards``: each shard serves its own
    list range (checked disjoint, fitting the index), lists no shard holds are empty.

    Its inverted lists become a ``VStackInvertedLists`` of ``SliceInvertedLists``: list
    ``l`` is read straight from the one shard that holds it, no copy, no per-list merge
    (an ``HStack`` would ask every shard for every list).  Read-only, zero-copy; the C++
    objects the stack points to are kept alive with ``index``.  Returns (and sets) ntotal.
    """
    ivf = faiss.extract_index_ivf(index)
    for i, j in find_overlaps([s.list_range for s in shards]):
        a, b = shards[i], shards[j]
        raise IndexFileError(
            f"{b.path}: lists [{b.list_range[0]}, {b.list_range[1]}) overlap another shard "
            f"({a.path}, lists [{a.list_range[0]}, {a.list_range[1]}))"
        )
    structure = structure_digest(index)
    parts: list[faiss.InvertedLists] = []
    pos, ntotal = 0, 0
    for s in sorted(shards, key=lambda s: s.list_range):
        ntotal += _entries_in_range(s, ivf, structure)
        a, b = s.list_range
        if a == b:
            continue
        if a > pos:
            parts.append(faiss.ArrayInvertedLists(a - pos, ivf.code_size))
        parts.append(faiss.SliceInvertedLists(s.invlists, a, b))
        pos = b
    if pos < ivf.nlist:
        parts.append(faiss.ArrayInvertedLists(ivf.nlist - pos, ivf.code_size))
    vec = faiss.InvertedListsPtrVector()
    for part in parts:
        vec.push_back(part)
    stacked = faiss.VStackInvertedLists(vec.size(), vec.data())
    ivf.replace_invlists(stacked, False)
    index.ntotal = ivf.ntotal = ntotal
    # the C++ objects do not own each other here: keep them alive with the index
    kept = getattr(index, "referenced_objects", [])
    index.referenced_objects = [*kept, shards, parts, vec, stacked]
    return ntotal


def open_hslices(trained: PathLike, hslices: Sequence[PathLike]) -> faiss.Index:
    """The trained index (with its quantizer) searching the lists of all given shards.

    Shards must come from this trained index (fingerprint) and have disjoint
    list ranges; lists no shard covers are empty.  Read-only, zero-copy: each
    list is served by the shard that holds it.
    """
    if not hslices:
        raise IndexFileError("no shards given")
    index, fingerprint = load_trained_index(trained)
    shards = [open_hslice(h) for h in hslices]
    recorded = [(s.path, s.manifest.trained_fingerprint) for s in shards if s.manifest]
    check_trained(index, fingerprint, trained, recorded)
    stack_hslices(index, shards)
    return index


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
