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
from typing import Union

from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk import hslice
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.paths import expand_inputs
from distributed_ondisk.ondisk.schema import HsliceManifest
from distributed_ondisk.ranges import find_overlaps
from distributed_ondisk.workdir import Workdir

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ShardMeta:
    """A shard and what its manifest says about it."""

    path: Path
    manifest: HsliceManifest

    @property
    def l0(self) -> int:
        return self.manifest.list_range[0]

    @property
    def l1(self) -> int:
        return self.manifest.list_range[1]

    @property
    def nlist(self) -> int | None:
        """When the manifest records it; else checked against the trained index."""
        return self.manifest.nlist

    @property
    def trained_fingerprint(self) -> str:
        return self.manifest.trained_fingerprint

    @property
    def part(self) -> tuple[int, int] | None:
        """(shard number, shard count) of its split, when the merge was given one."""
        hs = self.manifest.hslice
        return (hs.no, hs.of) if hs is not None else None

    @property
    def label(self) -> str:
        """``h1 of 4 (name)`` when the split is recorded, else the file name."""
        return f"h{self.part[0]} of {self.part[1]} ({self.path})" if self.part else str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def read_shard_meta(path: PathLike, *, checksums: bool = False) -> ShardMeta:
    """Load and check the manifest of one shard (files present with their recorded sizes)."""
    p = Path(path)
    if not p.is_file():
        raise IndexFileError(f"{p}: no such shard file")
    return ShardMeta(p, mf.verify_manifest(p, HsliceManifest, checksums=checksums))


def expand_shard_args(specs: PathLike | Sequence[PathLike]) -> list[Path]:
    """Shard files from directories, files, glob patterns, or comma-separated lists of them.

    A directory means every file in it that has an hslice manifest, so a
    trained index or a vslice lying there is not mistaken for a shard.
    """
    items: list[str] = []
    for s in [specs] if isinstance(specs, (str, os.PathLike)) else list(specs):
        items += [x for x in os.fspath(s).split(",") if x]
    return expand_inputs(items, hslice.INPUTS)


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
    for name, l0, l1 in ranges:
        if not 0 <= l0 <= l1 <= nlist:
            raise IndexFileError(f"shard {name}: lists [{l0}, {l1}) outside [0, {nlist})")
    held = sorted((r for r in ranges if r[1] < r[2]), key=lambda r: (r[1], r[2]))  # not empty
    for i, j in find_overlaps([(l0, l1) for _, l0, l1 in held]):
        (a, a0, a1), (b, b0, b1) = held[i], held[j]
        raise IndexFileError(
            f"shards {a} (lists [{a0}, {a1})) and {b} (lists [{b0}, {b1})) "
            f"overlap on lists [{b0}, {min(a1, b1)})"
        )
    # disjoint and sorted: the gaps are between consecutive ranges
    missing = []
    covered_to = 0
    for _, l0, l1 in held:
        if l0 > covered_to:
            missing.append((covered_to, l0))
        covered_to = l1
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
    layout (the work dir's trained index next to the shards or to their folder)."""
    from distributed_ondisk.ondisk.trained import find_trained, trained_candidates

    fp = common_fingerprint(metas)
    parts = [(m.path, m.manifest.trained_index) for m in metas]
    cands = trained_candidates(parts, lambda root: Workdir(root).trained)
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
