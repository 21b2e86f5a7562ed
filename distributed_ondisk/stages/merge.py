"""Merge vertical slices into one horizontal on-disk shard (lists ``[l0, l1)``).

Output: a contiguous ``OnDiskInvertedLists`` data file holding, for each list
in the range, the codes then the ids of all slices (in slice id order), and an
index file whose on-disk lists point at the data file by a path *relative to
the index's directory* (see :mod:`distributed_ondisk.ondisk.hslice` for opening).

The data file is written by :mod:`distributed_ondisk.stages.listcopy` in bounded,
overlapped batches with every copied byte checked against the slices' manifests
(faiss's ``merge_from_multiple`` writes through a shared mapping of the whole
output, so its resident memory grows with the shard).  Every input is checked
before any work: exists, readable, trained, same trained-index fingerprint and
structure, manifest agrees with the file, disjoint id ranges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk import vslice as vs
from distributed_ondisk.ondisk.hslice import write_hslice_index
from distributed_ondisk.ondisk.paths import expand_inputs
from distributed_ondisk.ondisk.schema import Counts, HsliceManifest, Part, VsliceManifest
from distributed_ondisk.ondisk.vslice import SliceLayout, check_header_trailer, read_layout
from distributed_ondisk.ranges import find_overlaps, resolve_range
from distributed_ondisk.stages.listcopy import write_lists
from distributed_ondisk.workdir import Workdir, default_invlists_for

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
# Memory ~ 4 batches.  2 MiB measured fastest (1.8x faster than 8 MiB on 2 cores): larger
# gathered batches are fresh allocations whose page faults cost more than the copy.  Each
# slice is read batch/nslices bytes at a time (the kernel's readahead covers small reads);
# with hundreds of slices on slow disks, raise --batch_mb.
DEFAULT_BATCH_BYTES = 2 << 20


@dataclass(frozen=True)
class MergeJob:
    inputs: Sequence[str]
    out: Path
    invlists: Path | None = None
    l0: int | None = None
    l1: int | None = None
    nslice: int | None = None
    slice_no: int | None = None
    trained: Path | None = None  # if given, slices must come from this trained index
    threads: int = 2
    batch_bytes: int = DEFAULT_BATCH_BYTES
    force: bool = False


@dataclass
class Vslice:
    path: Path
    manifest: VsliceManifest
    layout: SliceLayout
    id_range: tuple[int, int]


def resolve_inputs(specs: Sequence[str]) -> list[Path]:
    """Files, directories (their ``*.index``) or glob patterns -> sorted distinct vslice
    paths; a name that matches nothing is an error, never skipped."""
    return expand_inputs(specs, vs.INPUTS)


def open_vslice(path: Path) -> Vslice:
    if path.is_file() and not mf.manifest_path(path).exists():
        # the manifest is the integrity record: refused, but say how to adopt such a file
        raise IndexFileError(
            f"{path}: no manifest {mf.manifest_path(path).name} (not written "
            "by this tool, or copied without it; a slice made by faiss "
            "alone can be checked and adopted with merge_to_ondisk.py "
            "--adopt)"
        )
    m = mf.load_manifest(path, VsliceManifest)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise IndexFileError(f"{path}: unreadable: {e.strerror}") from e
    if size != m.files["index"].size:
        raise IndexFileError(
            f"{path}: {size} bytes, its manifest says "
            f"{m.files['index'].size} (truncated or rewritten?)"
        )
    layout = read_layout(path)
    if not layout.is_trained:
        raise IndexFileError(f"{path}: index is not trained")
    if layout.structure != m.structure:
        raise IndexFileError(f"{path}: index structure differs from its manifest")
    if layout.ntotal != m.rows or not np.array_equal(
        layout.sizes, m.list_sizes.array(str(mf.manifest_path(path)))
    ):
        raise IndexFileError(f"{path}: list sizes differ from its manifest")
    check_header_trailer(layout, m.regions)
    return Vslice(path, m, layout, m.id_range)


def check_vslices(
    paths: Sequence[Path], trained: tuple[faiss.Index, str] | None, threads: int
) -> list[Vslice]:
    """Open and cross-check all inputs (against ``trained``, an index and its file
    fingerprint, when given); raise naming the first bad file."""
    from distributed_ondisk.ondisk.trained import fingerprint_matches

    with ThreadPoolExecutor(max(1, threads)) as ex:
        slices = list(ex.map(open_vslice, paths))
    ref = slices[0]
    ref_fp = ref.manifest.trained_fingerprint
    if trained is not None and not fingerprint_matches(trained[0], trained[1], ref_fp):
        raise IndexFileError(
            f"{ref.path} was built from a different trained index than "
            f"the given one (fingerprints {ref_fp[:12]} vs {trained[1][:12]})"
        )
    for s in slices:
        if s.manifest.trained_fingerprint != ref_fp:
            raise IndexFileError(
                f"{s.path} was built from a different trained index than "
                f"{ref.path} (fingerprints {s.manifest.trained_fingerprint[:12]} "
                f"vs {ref_fp[:12]})"
            )
        if (s.layout.structure, s.layout.nlist, s.layout.code_size) != (
            ref.layout.structure,
            ref.layout.nlist,
            ref.layout.code_size,
        ):
            raise IndexFileError(f"{s.path} and {ref.path} have different index structures")
    for a, b in find_overlaps([s.id_range for s in slices]):
        raise IndexFileError(
            f"id ranges overlap: {slices[a].path} has {list(slices[a].id_range)}"
            f", {slices[b].path} has {list(slices[b].id_range)}"
        )
    return sorted(slices, key=lambda s: s.id_range)


def locate_trained(given: Path | None, slices: Sequence[Vslice], fingerprint: str) -> Path | None:
    """The trained index file of the slices, to record in the shard's manifest: the given
    one, else where the slices' manifests say, else next to the slices' folder."""
    from distributed_ondisk.ondisk.trained import find_trained, trained_candidates

    if given is not None:
        return given
    parts = [(s.path, s.manifest.trained_index) for s in slices]
    cands = trained_candidates(parts, lambda root: Workdir(root).trained)
    found, tried = find_trained(cands, fingerprint)
    if found is None:
        log.warning(
            "trained index of the slices not found (tried %s): the shard records "
            "only its fingerprint, searching it will need --trained",
            "; ".join(tried) or "nothing",
        )
    return found


def merge_hslice(job: MergeJob) -> HsliceManifest:
    """Build one horizontal shard (skipped when already complete); returns its manifest."""
    from distributed_ondisk.ondisk.trained import load_trained_index

    out = Path(job.out)
    il_path = Path(job.invlists) if job.invlists else default_invlists_for(out)
    if il_path.resolve() == out.resolve():
        raise InputError(f"--outputIL {il_path} must differ from --output")
    paths = resolve_inputs(job.inputs)
    trained = load_trained_index(job.trained) if job.trained else None
    for p in (out, il_path):
        mf.remove_stale_for(p)
    slices = check_vslices(paths, trained, job.threads)
    nlist = slices[0].layout.nlist
    l0, l1 = resolve_range(nlist, job.l0, job.l1, job.nslice, job.slice_no, "lists")
    inputs = [
        {
            "name": os.path.abspath(s.path),
            "digest": s.manifest.files["index"].digest,
            "id_range": list(s.id_range),
        }
        for s in slices
    ]
    fp = slices[0].manifest.trained_fingerprint
    params = {"lists": [l0, l1], "inputs": inputs, "trained_fingerprint": fp}
    if not job.force and mf.is_complete(out, HsliceManifest, params):
        log.info("%s is complete, skipping (use --force to rebuild)", out)
        return mf.load_manifest(out, HsliceManifest)
    log.info("merging lists [%d, %d) of %d vslices into %s", l0, l1, len(slices), out)
    # data first, then the index that points at it: the index never names a missing file
    sizes, il_digest = write_lists(slices, l0, l1, il_path, job.threads, job.batch_bytes)
    write_hslice_index(slices[0].path, out, il_path, l0, sizes)
    trained_path = locate_trained(job.trained, slices, fp)
    m = HsliceManifest(
        params=params,
        trained_fingerprint=fp,
        nlist=nlist,
        structure=slices[0].layout.structure,
        list_range=(l0, l1),
        list_sizes=Counts.of(sizes),
        rows=int(sizes.sum()),
        quantizer="placeholder",
        # not in params: moving the trained index must not make a complete shard "other"
        trained_index=mf.trained_link(trained_path, fp, out) if trained_path else None,
        # which part of which split: a missing shard can then be named at search time
        hslice=Part(no=int(job.slice_no), of=int(job.nslice)) if job.nslice is not None else None,
    )
    m = mf.write_manifest(
        out, m, {"index": out, "invlists": il_path}, known_digests={"invlists": il_digest}
    )
    log.info(
        "wrote %s + %s (%d vectors, %d bytes of lists)",
        out,
        il_path,
        m.rows,
        m.files["invlists"].size,
    )
    return m
