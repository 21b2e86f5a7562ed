"""Small JSON manifests that say a stage's output is complete and what it holds.

A manifest sits next to its output (``<name>.manifest.json``), is written
atomically *after* the output files, and records for each file its size and
XXH3-128 digest, plus the stage's facts (rows, id range, per-list counts, the trained
index fingerprint, the parameters used, the tool version).  "The output exists
and its manifest verifies" is how every stage decides a piece is finished, and
how the merge and the search refuse parts that belong to another build.

The digests detect corruption and truncation, not tampering (a writer can
rewrite the manifest too), so they use XXH3 (about 20 GB/s here) rather than
sha256 (1.8 GB/s): a shard's digest is computed while it is written and the
merge verifies slices as it streams them, and neither may cost more than the
write itself.

Each kind's keys are its dataclass in :mod:`~distributed_ondisk.ondisk.schema`; this
module reads, writes and verifies them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, Union, overload

import xxhash

from distributed_ondisk.atomic import TMP_MARKER, atomic_write_text
from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk.schema import (
    FORMAT_VERSION,
    KINDS,
    FileEntry,
    Manifest,
    TrainedLink,
)

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
M = TypeVar("M", bound=Manifest)
MANIFEST_SUFFIX = ".manifest.json"
_HASH_BUF = 8 << 20


def manifest_path(path: PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def tool_version() -> str:
    import faiss

    from distributed_ondisk import __version__

    return f"distributed_ondisk {__version__}, faiss {faiss.__version__}"


def new_digest() -> Any:
    """A streaming hasher of the manifests' digest (``update``, ``hexdigest``)."""
    return xxhash.xxh3_128()


def file_digest(path: PathLike) -> str:
    """XXH3-128 of a file (hex), read in large blocks."""
    h = new_digest()
    buf = bytearray(_HASH_BUF)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError as e:
        raise IndexFileError(f"cannot read {path}: {e.strerror}") from e
    return h.hexdigest()


def describe_file(path: PathLike, relative_to: Path, digest: str | None = None) -> FileEntry:
    p = Path(path)
    return FileEntry(
        name=os.path.relpath(os.path.abspath(p), os.path.abspath(relative_to)),
        size=p.stat().st_size,
        xxh3_128=digest or file_digest(p),
    )


def write_manifest(
    output: PathLike,
    manifest: M,
    files: Mapping[str, PathLike],
    known_digests: Mapping[str, str] | None = None,
) -> M:
    """Write the manifest of ``output``: ``manifest`` with its ``files`` (a role, "index",
    "invlists", to a path) described and the tool version; returns what was written.

    ``known_digests`` gives digests computed while writing, to skip re-reading big files.
    No timestamps: rebuilding the same piece gives a byte-identical manifest.
    """
    out = Path(output)
    entries = {
        role: describe_file(p, out.parent, (known_digests or {}).get(role))
        for role, p in files.items()
    }
    done = dataclasses.replace(manifest, tool=tool_version(), files=entries)
    doc = done.to_json()
    try:  # checked as a reader will check it: never publish what no reader accepts
        type(manifest).from_doc(doc, str(manifest_path(out)))
    except IndexFileError as e:
        raise RuntimeError(f"the writer of {out} built an invalid manifest: {e}") from e
    atomic_write_text(manifest_path(out), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return done


def _read_doc(output: PathLike) -> dict[str, Any]:
    mp = manifest_path(output)
    try:
        doc = json.loads(mp.read_text("utf-8"))
    except FileNotFoundError as e:
        raise IndexFileError(
            f"{output}: no manifest {mp.name} (not written by this tool, "
            "or its writer did not finish)"
        ) from e
    except (OSError, ValueError) as e:
        raise IndexFileError(f"{mp}: unreadable manifest: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise IndexFileError(f"{mp}: not a manifest of format {FORMAT_VERSION}")
    return doc


def manifest_kind(output: PathLike) -> str | None:
    """The kind a readable manifest of ``output`` says (unchecked otherwise), else None:
    for telling a folder's shards from the other files there."""
    try:
        kind = _read_doc(output).get("kind")
    except IndexFileError:
        return None
    return kind if isinstance(kind, str) else None


@overload
def load_manifest(output: PathLike, kind: type[M]) -> M: ...


@overload
def load_manifest(output: PathLike, kind: str | None = None) -> dict[str, Any]: ...


def load_manifest(output: PathLike, kind: str | type[Manifest] | None = None) -> Any:
    """The manifest of ``output``, checked against its kind's schema: the typed record when
    ``kind`` is a manifest class, the JSON document when it is a kind name or None (for
    code that handles any kind: verification sweeps, tools)."""
    doc = _read_doc(output)
    want = kind.KIND if isinstance(kind, type) else kind
    if want is not None and doc.get("kind") != want:
        raise IndexFileError(
            f"{output}: manifest says it is a {doc.get('kind')!r}, " f"expected a {want!r}"
        )
    cls = kind if isinstance(kind, type) else KINDS.get(doc.get("kind"))  # type: ignore[arg-type]
    m = cls.from_doc(doc, str(manifest_path(output))) if cls is not None else None
    return m if isinstance(kind, type) else doc


def _files_of(output: PathLike, loaded: Manifest | dict[str, Any]) -> dict[str, FileEntry]:
    if isinstance(loaded, Manifest):
        return loaded.files
    # a kind this version has no schema for: its files are still checked
    where, files = str(manifest_path(output)), loaded.get("files", {})
    if not isinstance(files, dict):
        raise IndexFileError(f"{where}: manifest key 'files' is not an object")
    return {role: FileEntry.from_doc(e, where, f"files.{role}.") for role, e in files.items()}


@overload
def verify_manifest(
    output: PathLike, kind: type[M], *, checksums: bool = ..., threads: int = ...
) -> M: ...


@overload
def verify_manifest(
    output: PathLike, kind: str | None = None, *, checksums: bool = ..., threads: int = ...
) -> dict[str, Any]: ...


def verify_manifest(
    output: PathLike,
    kind: str | type[Manifest] | None = None,
    *,
    checksums: bool = True,
    threads: int = 1,
) -> Any:
    """:func:`load_manifest`, then check that its files exist with the recorded sizes (and
    digests unless ``checksums=False``); IndexFileError naming the file otherwise."""
    loaded = load_manifest(output, kind)
    base = Path(output).parent
    entries = list(_files_of(output, loaded).items())
    for role, ent in entries:
        p = base / ent.name
        try:
            size = p.stat().st_size
        except OSError as e:
            raise IndexFileError(f"{output}: its {role} file {p} is missing or unreadable") from e
        if size != ent.size:
            raise IndexFileError(
                f"{output}: {role} file {p} has {size} bytes, "
                f"manifest says {ent.size} (truncated or rewritten?)"
            )
    if checksums:
        paths = [base / ent.name for _, ent in entries]
        with ThreadPoolExecutor(max(1, threads)) as ex:
            sums = list(ex.map(file_digest, paths))
        for (role, ent), p, s in zip(entries, paths, sums):
            if s != ent.digest:
                raise IndexFileError(
                    f"{output}: {role} file {p} checksum differs from its "
                    "manifest (corrupted or rewritten)"
                )
    return loaded


def is_complete(
    output: PathLike, kind: str | type[Manifest], params: Mapping[str, Any] | None = None
) -> bool:
    """True when ``output`` and its manifest verify, and (if given) were made with ``params``.

    Raises IndexFileError when the piece is complete but was made with other
    parameters: silently reusing or silently overwriting it would both be wrong.
    """
    if not Path(output).exists() or not manifest_path(output).exists():
        return False
    try:
        doc = verify_manifest(output, kind.KIND if isinstance(kind, type) else kind)
    except IndexFileError as e:
        log.info("rebuilding %s: %s", output, e)
        return False
    if params is not None and doc.get("params") != json.loads(json.dumps(dict(params))):
        raise IndexFileError(
            f"{output} exists and is complete but was built with other "
            f"parameters ({doc.get('params')}); use --force to rebuild it"
        )
    return True


def trained_link(trained: PathLike, fingerprint: str, part: PathLike) -> TrainedLink:
    """The record of the trained index a part (slice, shard) was built from: its path
    relative to the part's directory (followed first, so a tree moved as a whole still
    leads to it), its absolute path when written (for parts moved alone) and its
    fingerprint (what a found file must match)."""
    t = os.path.abspath(trained)
    return TrainedLink(
        path=os.path.relpath(t, os.path.dirname(os.path.abspath(part))),
        absolute=t,
        fingerprint=fingerprint,
    )


def linked_trained_paths(link: TrainedLink | None, part: PathLike) -> list[Path]:
    """Where a part's manifest says its trained index is, in the order to try."""
    if link is None:
        return []
    out = []
    if link.path:
        out.append(
            Path(part).parent / link.path if not os.path.isabs(link.path) else Path(link.path)
        )
    if os.path.isabs(link.absolute):
        out.append(Path(link.absolute))
    return out


def remove_stale_for(output: PathLike) -> list[Path]:
    """Remove leftovers of a crashed writer of ``output`` (and of its manifest) only.

    Not the whole directory: parallel jobs write their own slices next to it.
    """
    p = Path(output)
    removed = []
    for name in (p.name, manifest_path(p).name):
        for t in p.parent.glob(f".{glob.escape(name)}{TMP_MARKER}*"):
            try:
                t.unlink()
                removed.append(t)
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d stale temporary file(s) of %s", len(removed), p)
    return removed
