"""Inputs named on a command line (files, folders, glob patterns) -> the files of one kind.

The merge takes vslices and the search takes shards the same way; only what a folder
stands for differs: a folder of vslices means its ``*.index`` files (slices made by
faiss alone have no manifest until adopted), a folder of shards means its files with an
hslice manifest, whatever their names (so a trained index or a vslice lying there is not
mistaken for a shard).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from distributed_ondisk.errors import DistributedOndiskError, InputError
from distributed_ondisk.ondisk.manifest import MANIFEST_SUFFIX, manifest_kind

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class InputKind:
    """How the files of one kind are named on a command line, and the words of its errors."""

    what: str  # "vslice": "vslice X is given twice"
    kind: str  # the manifest kind
    folder_glob: str | None  # a folder means its files of these names; None: those of ``kind``
    folder_has_none: str  # "<folder>: directory holds no <this>"
    missing: str  # "<name>: <this>"
    none_given: str
    # raised for a name that matches nothing (the merge has always said IndexFileError)
    not_found: type[DistributedOndiskError] = InputError


def _visible(paths: Sequence[Path]) -> list[Path]:
    # dot names are temporaries of atomic writes (or hidden files): never an input
    return sorted(p for p in paths if not p.name.startswith("."))


def _folder(folder: Path, kind: InputKind) -> list[Path]:
    if kind.folder_glob is not None:
        return _visible(list(folder.glob(kind.folder_glob)))
    named = [
        m.with_name(m.name[: -len(MANIFEST_SUFFIX)]) for m in folder.glob("*" + MANIFEST_SUFFIX)
    ]
    return [p for p in _visible(named) if p.is_file() and manifest_kind(p) == kind.kind]


def expand_inputs(specs: Sequence[PathLike], kind: InputKind) -> list[Path]:
    """Files, folders and glob patterns -> the distinct files they name, in order (each
    folder's and pattern's sorted).  A name that matches nothing is an error, never
    skipped; so is a file given twice."""
    out: list[Path] = []
    for spec in map(os.fspath, specs):
        p = Path(spec)
        if p.is_dir():
            found = _folder(p, kind)
            if not found:
                raise kind.not_found(f"{spec}: directory holds no {kind.folder_has_none}")
        elif p.exists():
            found = [p]
        elif glob.has_magic(spec):
            found = _visible([Path(q) for q in glob.glob(spec)])
            if not found:
                raise kind.not_found(f"{spec}: pattern matches no file")
        else:
            raise kind.not_found(f"{spec}: {kind.missing}")
        out.extend(found)
    seen: dict[Path, str] = {}
    for p in out:
        key = p.resolve()
        if key in seen:
            raise InputError(f"{kind.what} {p} is given twice (also as {seen[key]})")
        seen[key] = str(p)
    if not out:
        raise InputError(kind.none_given)
    return out
