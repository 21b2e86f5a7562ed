"""The files at ``index_path`` that plain faiss opens, as autofaiss users expect.

``build_index`` keeps its working layout (trained index, shards with manifests,
id mapping) in the folder ``index_path + ".parts"``; at ``index_path`` itself
(``index_path1 ... index_pathN`` with ``nb_indices_to_keep = N > 1``, as
autofaiss names them) it writes one ordinary faiss index per shard: the
trained index, its real coarse quantizer, and ``OnDiskInvertedLists`` naming
the shard's lists file ``<index file>.ivfdata`` beside it.  The shards under
``.parts`` point at those same lists files (relative paths), so the lists are
on disk once.

How faiss opens them (what faiss does, not a choice made here):

* ``faiss.read_index(path)``: the file stores the *absolute* path of its lists
  file, so it opens from any working directory while the files stay where
  ``build_index`` wrote them.
* ``faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)``: the lists file is
  looked up beside ``path`` (the stored path's last component): still valid
  after the files are moved or copied together.  ``IO_FLAG_READ_ONLY`` may be
  added (the lists are memory-mapped either way).
* ``IO_FLAG_MMAP`` must not be used on these files: it includes
  ``IO_FLAG_SKIP_IVF_DATA``, so faiss 1.15 leaves the on-disk lists unmapped and
  the first search crashes.  That flag is for self-contained (in-RAM format)
  index files.

With ``metric_type="ip"`` the stages index ``d + 1`` dimensions (see
:mod:`distributed_ondisk.autobuild.mips`); the faiss file gets one more
pre-transform, a ``RemapDimensionsTransform`` that appends the 0 coordinate to
each query, so plain faiss takes ``d``-dimensional queries and ranks by inner
product.  Its distances stay the augmented L2 distances
``|q|^2 + M^2 - 2 <q, x>`` (``M``: ``max_norm`` in the infos and metric.json);
:func:`~distributed_ondisk.autobuild.mips.open_index` returns inner products.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.ondisk.indexfile import read_index, write_index

log = logging.getLogger(__name__)
PARTS_SUFFIX = ".parts"
DATA_SUFFIX = ".ivfdata"
TEMP_SUFFIX = "_tmp"


def parts_dir(index_path: Path) -> Path:
    """The working layout of the index at ``index_path`` (trained index, shards, ids)."""
    return index_path.with_name(index_path.name + PARTS_SUFFIX)


def temp_dir_for(index_path: Path) -> Path:
    """The default temporary folder (vslices, the encoder's rows): ``index_path_tmp``."""
    return index_path.with_name(index_path.name + TEMP_SUFFIX)


def index_files(index_path: Path, nb_indices: int) -> list[Path]:
    """``[index_path]``, or ``index_path1 ... index_pathN`` (autofaiss's names)."""
    if nb_indices == 1:
        return [index_path]
    return [index_path.with_name(f"{index_path.name}{i}") for i in range(1, nb_indices + 1)]


def data_file(index_file: Path) -> Path:
    """The lists file an index file names: ``<index file>.ivfdata``, beside it."""
    return index_file.with_name(index_file.name + DATA_SUFFIX)


def check_index_path(index_path: Path, nb_indices: int) -> None:
    """Refuse, before any work, outputs that would land on folders (an older build's
    ``index_path`` directory, say) or on the parts folder's name being a file."""
    for p in index_files(index_path, nb_indices) + [parts_dir(index_path)]:
        if p.exists() and p.is_dir() != (p == parts_dir(index_path)):
            kind = "a folder" if p.is_dir() else "a file"
            hint = (
                " (older versions of build_index wrote a folder at index_path: move it "
                "away or choose another index_path)"
                if p.is_dir()
                else ""
            )
            raise InputError(f"index_path {index_path}: {p} is {kind}{hint}")


def with_zero_coordinate(index: faiss.Index, d: int) -> faiss.Index:
    """``index`` (over ``d + 1`` dims) behind a transform appending a 0 coordinate."""
    remap = faiss.RemapDimensionsTransform(
        d, d + 1, faiss.swig_ptr(np.array(list(range(d)) + [-1], dtype=np.int32))
    )
    if isinstance(index, faiss.IndexPreTransform):
        index.prepend_transform(remap)
        remap.this.disown()  # the chain owns it now
        return index
    out = faiss.IndexPreTransform(remap, index)
    out.own_fields = False  # ``index`` stays owned by its Python object
    out.referenced_objects = [remap, index]
    return out


def write_faiss_index(
    trained: Path, shard: Path, out: Path, lists_file: Path, ip_d: int | None = None
) -> int:
    """Write at ``out`` the trained index searching ``shard``'s lists, naming
    ``lists_file`` (absolute); atomic.  Returns the number of vectors."""
    index = read_index(trained)
    hs = read_index(shard, faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_SKIP_IVF_DATA)
    od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(hs).invlists)
    if not isinstance(od, faiss.OnDiskInvertedLists):
        raise IndexFileError(f"{shard}: not an on-disk shard")
    named = Path(od.filename) if os.path.isabs(od.filename) else shard.parent / od.filename
    if os.path.abspath(named) != os.path.abspath(lists_file):
        raise AssertionError(f"{shard} names lists {named}, expected {lists_file}")
    od.filename = os.path.abspath(lists_file)
    ivf = faiss.extract_index_ivf(index)
    if ivf.nlist != od.nlist or ivf.code_size != od.code_size:
        raise IndexFileError(f"{shard}: nlist/code size differ from {trained}")
    ivf.replace_invlists(od, False)  # ``hs`` owns the lists; both live until return
    ntotal = int(sum(od.list_size(i) for i in range(od.nlist)))
    index.ntotal = ivf.ntotal = ntotal
    if ip_d is not None:
        index = with_zero_coordinate(index, ip_d)
    with atomic_path(out) as tmp:
        write_index(index, tmp)
    log.info("wrote %s (%d vectors, lists in %s)", out, ntotal, lists_file.name)
    return ntotal


def write_faiss_indexes(
    trained: Path, shards: Sequence[Path], index_path: Path, ip_d: int | None = None
) -> list[dict]:
    """One faiss index file per shard, named as :func:`index_files` says."""
    outs = index_files(index_path, len(shards))
    return [
        {
            "path": str(out),
            "lists": str(data_file(out)),
            "vectors": write_faiss_index(trained, shard, out, data_file(out), ip_d),
        }
        for shard, out in zip(shards, outs)
    ]
