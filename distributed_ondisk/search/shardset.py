"""Finding, describing and checking horizontal shards before anything is served.

A horizontal shard (hslice) is an IVF index file whose inverted lists live in
an ``OnDiskInvertedLists`` data file next to it, holding the lists ``[l0, l1)``
of one trained index.  Its manifest records the list range and the trained
index fingerprint.  Everything here runs before a search starts, so a wrong
set of shards is refused with a message naming the shard and the lists at
fault instead of silently returning fewer results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import faiss

from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.ondisk import manifest as mf

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
KIND = "hslice"


@dataclass(frozen=True)
class ShardMeta:
    """What a shard's manifest says about it."""

    path: Path
    l0: int
    l1: int
    nlist: int | None  # when the manifest records it; else checked against the trained index
    trained_fingerprint: str
    structure: str | None
    trained_paths: tuple[Path, ...]  # where the manifest says the trained index is
    part: tuple[int, int] | None = None  # (shard number, shard count) of its split

    @property
    def label(self) -> str:
        """``h1 of 4 (name)`` when the split is recorded, else the file name."""
        return f"h{self.part[0]} of {self.part[1]} ({self.path})" if self.part else str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def _first(doc: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in doc:
            return doc[k]
    return None


def read_shard_meta(path: PathLike, *, checksums: bool = False) -> ShardMeta:
    """Load and check the manifest of one shard (files present with their recorded sizes)."""
    p = Path(path)
    if not p.is_file():
        raise IndexFileError(f"{p}: no such shard file")
    doc = mf.verify_manifest(p, KIND, checksums=checksums)
    rng = _first(doc, "list_range", "lists")
    fp = _first(doc, "trained_fingerprint", "fingerprint")
    nlist = doc.get("nlist")
    if not isinstance(rng, (list, tuple)) or len(rng) != 2 or not isinstance(fp, str):
        raise IndexFileError(f"{p}: manifest lacks list_range / trained_fingerprint")
    l0, l1 = int(rng[0]), int(rng[1])
    if not 0 <= l0 <= l1 or (isinstance(nlist, int) and l1 > nlist):
        raise IndexFileError(f"{p}: invalid list range [{l0}, {l1}) (nlist {nlist})")
    part = None
    hs = doc.get("hslice")
    if isinstance(hs, dict):
        no, of = hs.get("no"), hs.get("of")
        if not (isinstance(no, int) and isinstance(of, int) and 0 <= no < of):
            raise IndexFileError(f"{p}: manifest has an invalid shard number {hs}")
        part = (no, of)
    return ShardMeta(
        p, l0, l1, nlist, fp, doc.get("structure"), tuple(mf.linked_trained_paths(doc, p)), part
    )


def expand_shard_args(specs: PathLike | Sequence[PathLike]) -> list[Path]:
    """Shard files from a directory, files, or a comma-separated list of either.

    A directory means every file in it that has an hslice manifest, so a
    trained index or a vslice lying there is not mistaken for a shard.
    """
    items: list[str] = []
    for s in ([specs] if isinstance(specs, (str, os.PathLike)) else list(specs)):
        items += [x for x in os.fspath(s).split(",") if x]
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            # any name: users call their shards as they like (*.index is only the layout's)
            found = sorted(
                q
                for q in (
                    m.with_name(m.name[: -len(mf.MANIFEST_SUFFIX)])
                    for m in p.glob("*" + mf.MANIFEST_SUFFIX)
                    if not m.name.startswith(".")
                )
                if q.is_file() and _is_hslice(q)
            )
            if not found:
                raise InputError(
                    f"{p}: directory holds no shard (a file with an hslice " "manifest)"
                )
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such shard file or directory")
    if not out:
        raise InputError("no shard given")
    return out


def _is_hslice(p: Path) -> bool:
    try:
        return mf.load_manifest(p).get("kind") == KIND
    except IndexFileError:
        return False


def missing_parts(
    missing: Sequence[tuple[int, int]], nlist: int, splits: Sequence[int]
) -> list[str]:
    """Names (``h1 of 4, lists [16, 32)``) of the shards of the recorded splits (shard
    counts) that hold some of the ``missing`` list ranges."""
    from distributed_ondisk.ranges import plan_hslices

    names = []
    for m in sorted(set(splits)):
        for j, (a, b) in enumerate(plan_hslices(nlist, m)):
            if a < b and any(a < y and x < b for x, y in missing):
                names.append(f"h{j} of {m}, lists [{a}, {b})")
    return names


def check_coverage(
    ranges: Sequence[tuple[str, int, int]],
    nlist: int,
    *,
    complete: bool = True,
    splits: Sequence[int] = (),
) -> None:
    """Check that named list ranges ``(name, l0, l1)`` do not overlap and, if ``complete``,
    cover ``[0, nlist)``; IndexFileError naming the shards or the missing lists otherwise
    (and the missing shards, when the given ones record their split: ``splits``, the
    shard counts)."""
    if not ranges:
        raise IndexFileError("no shard given")
    order = sorted(ranges, key=lambda r: (r[1], r[2]))
    for name, l0, l1 in order:
        if not 0 <= l0 <= l1 <= nlist:
            raise IndexFileError(f"shard {name}: lists [{l0}, {l1}) outside [0, {nlist})")
    missing = []
    covered_to = 0
    prev = None
    for name, l0, l1 in order:
        if l0 == l1:
            continue
        if prev is not None and l0 < covered_to:
            raise IndexFileError(
                f"shards {prev[0]} (lists [{prev[1]}, {prev[2]})) and {name} "
                f"(lists [{l0}, {l1})) overlap on lists "
                f"[{l0}, {min(l1, covered_to)})"
            )
        if l0 > covered_to:
            missing.append((covered_to, l0))
        if l1 > covered_to:
            covered_to = l1
            prev = (name, l0, l1)
    if covered_to < nlist:
        missing.append((covered_to, nlist))
    if complete and missing:
        desc = ", ".join(f"[{a}, {b})" for a, b in missing)
        parts = missing_parts(missing, nlist, splits)
        which = f"missing shard(s): {'; '.join(parts)}" if parts else "is a shard missing?"
        raise IndexFileError(
            f"shards do not cover every inverted list: lists {desc} of "
            f"{nlist} are in no given shard ({which})"
        )


def common_fingerprint(metas: Sequence[ShardMeta]) -> str:
    """The trained index fingerprint all the shards record; IndexFileError naming two
    shards of different trained indexes otherwise."""
    fp = metas[0].trained_fingerprint
    for m in metas:
        if m.trained_fingerprint != fp:
            raise IndexFileError(
                f"shards {metas[0].path} and {m.path} were built from "
                f"different trained indexes (fingerprints {fp[:12]} and "
                f"{m.trained_fingerprint[:12]})"
            )
    return fp


def find_trained_index(metas: Sequence[ShardMeta]) -> Path:
    """The trained index the shards were built from (their common fingerprint): where
    their manifests say (relative to the shard, then absolute), else the work directory
    layout (``trained.index`` next to the shards or to their folder)."""
    from distributed_ondisk.ondisk.trained import find_trained

    fp = common_fingerprint(metas)
    cands: list[Path] = []
    for m in metas:
        cands += m.trained_paths
    for d in dict.fromkeys(m.path.parent for m in metas):
        cands += [d / "trained.index", d.parent / "trained.index"]
    found, tried = find_trained(cands, fp)
    if found is not None:
        if tried:
            log.info("trained index found at %s (also tried %s)", found, "; ".join(tried))
        return found
    raise IndexFileError(
        f"cannot find the trained index of shard {metas[0].path}: tried "
        f"{'; '.join(tried)}. The shards need the trained index with fingerprint "
        f"{fp} (shard files hold only the inverted lists; their coarse quantizer is in the "
        "trained index, so they cannot be searched without it): pass it with --trained PATH"
    )


def open_shard(meta: ShardMeta, code_size: int, structure: str) -> Any:
    """Open one shard read-only (lists memory-mapped) and check it fits the trained index.

    Returns the build's ``Hslice`` (index + on-disk lists); keep it alive while
    its lists are searched.
    """
    from distributed_ondisk.ondisk.hslice import open_hslice
    from distributed_ondisk.ondisk.indexfile import ondisk_list_table, structure_digest

    h = open_hslice(meta.path)
    ivf = faiss.extract_index_ivf(h.index)
    if ivf.nlist < meta.l1 or ivf.code_size != code_size:
        raise IndexFileError(
            f"{meta.path}: nlist {ivf.nlist} / code size {ivf.code_size} do "
            f"not fit lists [{meta.l0}, {meta.l1}) / code size {code_size}"
        )
    if structure_digest(h.index) != structure:
        raise IndexFileError(
            f"{meta.path}: index structure (transform, encoder, nlist) differs "
            "from the trained index's: built from another trained index"
        )
    sizes = ondisk_list_table(h.invlists)[:, 0]
    stray = sizes.copy()
    stray[meta.l0 : meta.l1] = 0
    if stray.any():
        bad = int(stray.nonzero()[0][0])
        raise IndexFileError(
            f"{meta.path}: holds entries in list {bad}, outside its range "
            f"[{meta.l0}, {meta.l1})"
        )
    return h
