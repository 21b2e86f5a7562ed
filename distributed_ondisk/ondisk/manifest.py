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
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import os
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Union

import numpy as np
import xxhash

from distributed_ondisk.atomic import TMP_MARKER, atomic_write_text
from distributed_ondisk.errors import IndexFileError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
MANIFEST_SUFFIX = ".manifest.json"
FORMAT_VERSION = 2  # 2: XXH3-128 digests (1 had sha256)
DIGEST = "xxh3_128"
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


def encode_counts(counts: np.ndarray) -> dict[str, Any]:
    """Per-list counts, compact enough for millions of lists (zlib + base64 of uint64)."""
    arr = np.ascontiguousarray(counts, dtype="<u8")
    return {
        "n": int(arr.size),
        "total": int(arr.sum()),
        "zlib_b64_u64": base64.b64encode(zlib.compress(arr.tobytes(), 6)).decode("ascii"),
    }


def decode_counts(enc: Mapping[str, Any]) -> np.ndarray:
    try:
        arr = np.frombuffer(zlib.decompress(base64.b64decode(enc["zlib_b64_u64"])), dtype="<u8")
    except (KeyError, ValueError, zlib.error) as e:
        raise IndexFileError(f"malformed per-list counts in manifest: {e}") from e
    if arr.size != enc.get("n") or int(arr.sum()) != enc.get("total"):
        raise IndexFileError("per-list counts in manifest do not match their recorded size/total")
    return arr.astype(np.int64)


def describe_file(path: PathLike, relative_to: Path, digest: str | None = None) -> dict[str, Any]:
    p = Path(path)
    return {
        "name": os.path.relpath(os.path.abspath(p), os.path.abspath(relative_to)),
        "size": p.stat().st_size,
        DIGEST: digest or file_digest(p),
    }


def write_manifest(
    output: PathLike,
    kind: str,
    files: Mapping[str, PathLike],
    known_digests: Mapping[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Write the manifest of ``output``; ``files`` maps a role ("index", "invlists") to a path.

    ``known_digests`` gives digests computed while writing, to skip re-reading big files.
    No timestamps: rebuilding the same piece gives a byte-identical manifest.
    """
    out = Path(output)
    base = out.parent
    doc: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "tool": tool_version(),
        "files": {
            role: describe_file(p, base, (known_digests or {}).get(role))
            for role, p in files.items()
        },
    }
    doc.update(fields)
    atomic_write_text(manifest_path(out), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def load_manifest(output: PathLike, kind: str | None = None) -> dict[str, Any]:
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
    if kind is not None and doc.get("kind") != kind:
        raise IndexFileError(
            f"{output}: manifest says it is a {doc.get('kind')!r}, " f"expected a {kind!r}"
        )
    return doc


def verify_manifest(
    output: PathLike, kind: str | None = None, *, checksums: bool = True, threads: int = 1
) -> dict[str, Any]:
    """Load the manifest of ``output`` and check that its files exist with the recorded
    sizes (and digests unless ``checksums=False``); IndexFileError naming the file otherwise."""
    doc = load_manifest(output, kind)
    base = Path(output).parent
    entries = list(doc.get("files", {}).items())
    for role, ent in entries:
        p = base / ent["name"]
        try:
            size = p.stat().st_size
        except OSError as e:
            raise IndexFileError(f"{output}: its {role} file {p} is missing or unreadable") from e
        if size != ent["size"]:
            raise IndexFileError(
                f"{output}: {role} file {p} has {size} bytes, "
                f"manifest says {ent['size']} (truncated or rewritten?)"
            )
    if checksums:
        paths = [base / ent["name"] for _, ent in entries]
        with ThreadPoolExecutor(max(1, threads)) as ex:
            sums = list(ex.map(file_digest, paths))
        for (role, ent), p, s in zip(entries, paths, sums):
            if s != ent.get(DIGEST):
                raise IndexFileError(
                    f"{output}: {role} file {p} checksum differs from its "
                    "manifest (corrupted or rewritten)"
                )
    return doc


def verify_many(outputs: Iterable[PathLike], kind: str, threads: int = 1) -> list[dict[str, Any]]:
    """verify_manifest on many outputs, checksumming files in parallel threads."""
    outs = list(outputs)
    with ThreadPoolExecutor(max(1, threads)) as ex:
        return list(ex.map(lambda o: verify_manifest(o, kind), outs))


def is_complete(output: PathLike, kind: str, params: Mapping[str, Any] | None = None) -> bool:
    """True when ``output`` and its manifest verify, and (if given) were made with ``params``.

    Raises IndexFileError when the piece is complete but was made with other
    parameters: silently reusing or silently overwriting it would both be wrong.
    """
    if not Path(output).exists() or not manifest_path(output).exists():
        return False
    try:
        doc = verify_manifest(output, kind)
    except IndexFileError as e:
        log.info("rebuilding %s: %s", output, e)
        return False
    if params is not None and doc.get("params") != json.loads(json.dumps(dict(params))):
        raise IndexFileError(
            f"{output} exists and is complete but was built with other "
            f"parameters ({doc.get('params')}); use --force to rebuild it"
        )
    return True


def trained_link(trained: PathLike, fingerprint: str, part: PathLike) -> dict[str, Any]:
    """The record of the trained index a part (slice, shard) was built from: its path
    relative to the part's directory (followed first, so a tree moved as a whole still
    leads to it), its absolute path when written (for parts moved alone) and its
    fingerprint (what a found file must match)."""
    t = os.path.abspath(trained)
    return {
        "path": os.path.relpath(t, os.path.dirname(os.path.abspath(part))),
        "absolute": t,
        "fingerprint": fingerprint,
    }


def linked_trained_paths(doc: Mapping[str, Any], part: PathLike) -> list[Path]:
    """Where a part's manifest says its trained index is, in the order to try."""
    link = doc.get("trained_index")
    if not isinstance(link, Mapping):
        return []
    out = []
    rel, absolute = link.get("path"), link.get("absolute")
    if isinstance(rel, str) and rel:
        out.append(Path(part).parent / rel if not os.path.isabs(rel) else Path(rel))
    if isinstance(absolute, str) and os.path.isabs(absolute):
        out.append(Path(absolute))
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
