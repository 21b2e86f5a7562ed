"""Adopt vertical slices written by faiss alone (``merge_to_ondisk.py --adopt``).

The merge refuses a slice without a manifest: the manifest is the integrity record
its copy is checked against.  Slices made by the classic faiss
``make_index_vslice.py`` (a trained index, ``add_with_ids``, ``write_index``), or
copied with ``cp *.index``, have none.  Adoption checks each such file *as it is*
and writes the manifest it would have had; the merge then runs as usual, its
digests now guarding against the file changing afterwards.

Checked, for every file before any manifest is written (a bad set writes nothing):
readable faiss IVF index, trained, lists stored contiguously, list sizes summing to
its vector count, non-negative ids; the same structure (transform, encoder, nlist,
code size) and coarse centroids as the other slices and as ``--trained`` when given;
id ranges disjoint between slices.  Without ``--trained`` the trained index is
identified by content (structure + centroids, see
:func:`~distributed_ondisk.ondisk.trained.content_fingerprint`), which needs
the slices to carry their quantizer, as faiss-made slices do.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from distributed_ondisk.errors import IndexFileError, InputError, OutputError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import IDX_BYTES, ivf_of, read_index, structure_digest
from distributed_ondisk.ondisk.schema import Counts, VsliceManifest
from distributed_ondisk.ondisk.vslice import SliceLayout, read_layout, region_checksums
from distributed_ondisk.ranges import find_overlaps

log = logging.getLogger(__name__)


@dataclass
class Found:
    """One slice as found on disk."""

    path: Path
    layout: SliceLayout
    id_range: tuple[int, int]
    centroids: np.ndarray | None  # its coarse quantizer's content, if it kept it
    d: int
    manifest: VsliceManifest | None  # when it already has one


def _id_range(layout: SliceLayout) -> tuple[int, int]:
    """[min id, max id + 1) of a slice, read from the id part of each list (codes are
    not read); ``(0, 0)`` for an empty slice."""
    cs = layout.code_size
    lo, hi = None, None
    mm = np.memmap(layout.path, dtype=np.uint8, mode="r")
    try:
        for j in np.flatnonzero(layout.sizes).tolist():
            n = int(layout.sizes[j])
            start = int(layout.offsets[j]) + n * cs
            ids = np.frombuffer(mm[start : start + n * IDX_BYTES], dtype="<i8")
            a, b = int(ids.min()), int(ids.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    finally:
        del mm
    if lo is None:
        return 0, 0
    if lo < 0:
        raise IndexFileError(
            f"{layout.path}: holds negative ids (min {lo}): not a slice of " "row numbers"
        )
    if hi - lo + 1 < layout.ntotal:
        raise IndexFileError(
            f"{layout.path}: {layout.ntotal} vectors with ids in " f"[{lo}, {hi}]: some ids repeat"
        )
    return lo, hi + 1


def inspect(path: Path) -> Found:
    """Read one slice file and check it on its own; IndexFileError naming it otherwise."""
    try:
        layout = read_layout(path)  # readable, IVF, contiguous lists
    except IndexFileError as e:
        if str(path) in str(e):
            raise
        raise IndexFileError(f"{path}: {e}") from e
    if not layout.is_trained:
        raise IndexFileError(f"{path}: index is not trained")
    if int(layout.sizes.sum()) != layout.ntotal:
        raise IndexFileError(
            f"{path}: list sizes sum to {int(layout.sizes.sum())} but the "
            f"index says it holds {layout.ntotal} vectors"
        )
    index = read_index(path, faiss.IO_FLAG_MMAP)
    ivf = ivf_of(index, str(path))
    q = ivf.quantizer
    if q.ntotal not in (0, ivf.nlist):
        raise IndexFileError(
            f"{path}: coarse quantizer holds {q.ntotal} centroids, nlist is " f"{ivf.nlist}"
        )
    try:
        centroids = q.reconstruct_n(0, q.ntotal) if q.ntotal else None
    except RuntimeError as e:
        raise IndexFileError(f"{path}: coarse quantizer cannot return its centroids") from e
    d = int(index.d)
    del index, ivf, q
    m = mf.load_manifest(path, VsliceManifest) if mf.manifest_path(path).exists() else None
    return Found(path, layout, _id_range(layout), centroids, d, m)


def _describe(f: Found) -> str:
    return f"d={f.d}, nlist={f.layout.nlist}, code size={f.layout.code_size}"


def check_same_trained(
    found: Sequence[Found], trained: faiss.Index | None, trained_path: Path | None
) -> tuple[str, np.ndarray | None]:
    """All slices have the trained structure and centroids of ``trained`` (when given)
    or of each other; returns (structure digest, centroids or None)."""
    if trained is not None:
        tivf = faiss.extract_index_ivf(trained)
        ref_name = f"the trained index {trained_path}"
        ref = (structure_digest(trained), int(trained.d), int(tivf.nlist), int(tivf.code_size))
        ref_c: np.ndarray | None = tivf.quantizer.reconstruct_n(0, tivf.nlist)
    else:
        f0 = found[0]
        ref_name = str(f0.path)
        ref = (f0.layout.structure, f0.d, f0.layout.nlist, f0.layout.code_size)
        kept = [f for f in found if f.centroids is not None]
        ref_c = kept[0].centroids if kept else None
    # whose centroids the others are compared with
    ref_name_c = ref_name if trained is not None or not kept else str(kept[0].path)
    for f in found:
        mine = (f.layout.structure, f.d, f.layout.nlist, f.layout.code_size)
        if mine[1:] != ref[1:]:
            raise IndexFileError(
                f"{f.path}: {_describe(f)}, but {ref_name} has d={ref[1]}, "
                f"nlist={ref[2]}, code size={ref[3]}: another trained index"
            )
        if mine[0] != ref[0]:
            raise IndexFileError(
                f"{f.path}: its trained structure (transform, encoder "
                f"parameters) differs from {ref_name}'s: another trained index"
            )
        if f.centroids is not None and ref_c is not None and not np.array_equal(f.centroids, ref_c):
            raise IndexFileError(
                f"{f.path}: its coarse centroids differ from {ref_name_c}'s: "
                "another trained index"
            )
    return ref[0], ref_c


def _fingerprint(
    found: Sequence[Found],
    trained: tuple[faiss.Index, str] | None,
    structure: str,
    centroids: np.ndarray | None,
) -> str:
    """The trained-index fingerprint the adopted slices' manifests record.

    With ``--trained``: its file's.  Without, the slices must prove by their own
    quantizer that they share one trained index (the centroids were compared by
    :func:`check_same_trained`): the fingerprint of slices adopted or built before
    when one of those carries the same centroids, else the content fingerprint.
    """
    from distributed_ondisk.ondisk.trained import content_fingerprint_of, fingerprint_matches

    done = [(f, f.manifest) for f in found if f.manifest is not None]
    if trained is not None:
        for f, m in done:
            if not fingerprint_matches(trained[0], trained[1], m.trained_fingerprint):
                raise IndexFileError(
                    f"{f.path}: its manifest names another trained index "
                    f"(fingerprint {m.trained_fingerprint[:12]}) than the given one "
                    f"({trained[1][:12]})"
                )
        return trained[1]
    fps = sorted({m.trained_fingerprint for _, m in done})
    if len(fps) > 1:
        raise IndexFileError(
            f"slices {done[0][0].path} and {done[-1][0].path} have manifests "
            "naming different trained indexes"
        )
    todo = [f for f in found if f.manifest is None]
    if not todo:
        return fps[0]
    blind = [f for f in todo if f.centroids is None]
    if blind or centroids is None or (done and all(f.centroids is None for f, _ in done)):
        what = blind[0].path if blind else todo[0].path
        raise InputError(
            f"cannot tell which trained index {what} comes from: it (or the "
            "slices already adopted) does not carry its coarse quantizer; pass "
            "the trained index (--trained)"
        )
    return fps[0] if fps else content_fingerprint_of(structure, centroids)


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder`` (permissions, read-only mounts, quotas:
    whatever would make the manifest write fail, found before any is written)."""
    fd, name = tempfile.mkstemp(prefix=".adopt-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)


def _check_writable(todo: Sequence[Path]) -> None:
    for d in dict.fromkeys(p.parent for p in todo):
        try:
            _probe_write(d)
        except OSError as e:
            raise OutputError(
                f"cannot adopt the slices in {d}: the folder is not writable "
                f"({e.strerror or e}), and each manifest must lie next to its "
                "slice (copy the slices to a writable folder, then --adopt)"
            ) from e


def write_adopted_manifest(f: Found, fingerprint: str, trained_path: Path | None) -> VsliceManifest:
    i0, i1 = f.id_range
    m = VsliceManifest(
        params={"adopted": True, "trained_fingerprint": fingerprint, "rows": [i0, i1]},
        regions=region_checksums(f.layout),
        trained_fingerprint=fingerprint,
        structure=f.layout.structure,
        rows=f.layout.ntotal,
        id_range=(i0, i1),
        list_sizes=Counts.of(f.layout.sizes),
        quantizer="kept" if f.centroids is not None else "placeholder",
        data=None,
        adopted=True,
        trained_index=(
            mf.trained_link(trained_path, fingerprint, f.path) if trained_path is not None else None
        ),
    )
    return mf.write_manifest(f.path, m, {"index": f.path})


def adopt_vslices(
    paths: Sequence[Path], trained: Path | None = None, threads: int = 2
) -> list[Path]:
    """Check slice files and write the manifests of those without one; returns the
    slices adopted now.  Slices that have a manifest are checked with the others and
    kept as they are (so a rerun, or parallel merge jobs adopting the same slices,
    write nothing new)."""
    from distributed_ondisk.ondisk.trained import load_trained_index
    from distributed_ondisk.stages.merge import open_vslice

    if not paths:
        raise InputError("no vslices to adopt")
    # before the checks, which read every slice: a read-only folder is known at once
    _check_writable(
        [p for p in map(Path, paths) if p.is_file() and not mf.manifest_path(p).exists()]
    )
    t = load_trained_index(trained) if trained is not None else None
    with ThreadPoolExecutor(max(1, threads)) as ex:
        found = list(ex.map(inspect, map(Path, paths)))
    for f in found:
        if f.manifest is not None:
            try:
                open_vslice(f.path)
            except IndexFileError as e:
                raise IndexFileError(
                    f"{e} (it has a manifest that does not match it; remove "
                    f"{mf.manifest_path(f.path).name} to adopt the file as "
                    "it is now)"
                ) from e
    structure, centroids = check_same_trained(found, t[0] if t else None, trained)
    fp = _fingerprint(found, t, structure, centroids)
    for a, b in find_overlaps([f.id_range for f in found]):
        raise IndexFileError(
            f"id ranges overlap: {found[a].path} holds ids "
            f"{list(found[a].id_range)}, {found[b].path} holds "
            f"{list(found[b].id_range)}"
        )
    todo = [f for f in found if f.manifest is None]
    for f in todo:
        write_adopted_manifest(f, fp, trained)
        open_vslice(f.path)  # reads back as the merge will check it
        log.info("adopted %s: %d vectors, ids [%d, %d)", f.path, f.layout.ntotal, *f.id_range)
    if not todo:
        log.info("all %d slices already have a manifest: nothing to adopt", len(found))
    return [f.path for f in todo]
