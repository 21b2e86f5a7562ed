"""Build the empty trained index from k-means centroids and a training sample.

Structure: ``[transform ->] IVF<k>_HNSW32, <encoder>``.  The transform (random
rotation, PCA or OPQ) is applied to the centroids *and* the data (it is part of
the index), the centroids become the content of an HNSW coarse quantizer, and
the encoder (SQ6 by default) is trained on the transformed sample rows.

The trained index is identified by its *fingerprint*, the sha256 of its file:
every slice and shard records it, and the merge and the search refuse parts
whose fingerprints differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.errors import IndexFileError, VectorFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import ivf_of, structure_digest
from distributed_ondisk.ondisk.schema import TrainedLink, TrainedManifest

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
KIND = TrainedManifest.KIND


def fingerprint_bytes(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()


CONTENT_PREFIX = "content-sha256:"


def content_fingerprint(index: faiss.Index) -> str:
    """The identity of a trained index by what it holds, not by its file's bytes: its
    structure digest and its coarse centroids.

    Slices made by faiss alone (``--adopt``) carry their quantizer but no record of
    the trained file; without ``--trained`` this is the identity they can prove.  A
    trained index file matches a part recorded this way when its content matches
    (see :func:`fingerprint_matches`), whatever faiss version serialized it.
    """
    ivf = ivf_of(index, "trained index")
    q = ivf.quantizer
    if q.ntotal != ivf.nlist:
        raise IndexFileError(
            f"coarse quantizer holds {q.ntotal} centroids, nlist is "
            f"{ivf.nlist}: no content fingerprint"
        )
    try:
        centroids = q.reconstruct_n(0, q.ntotal)
    except RuntimeError as e:
        raise IndexFileError("coarse quantizer cannot return its centroids") from e
    return content_fingerprint_of(structure_digest(index), centroids)


def content_fingerprint_of(structure: str, centroids: np.ndarray) -> str:
    """:func:`content_fingerprint` from a structure digest and the coarse centroids."""
    h = hashlib.sha256(structure.encode("ascii"))
    h.update(np.ascontiguousarray(centroids, dtype=np.float32).tobytes())
    return CONTENT_PREFIX + h.hexdigest()


def fingerprint_matches(index: faiss.Index, file_fingerprint: str, wanted: str) -> bool:
    """Whether a trained index (its file's sha256 ``file_fingerprint``) is the one a part
    recorded as ``wanted`` (a file sha256, or a :func:`content_fingerprint`)."""
    if wanted == file_fingerprint:
        return True
    if isinstance(wanted, str) and wanted.startswith(CONTENT_PREFIX):
        try:
            return content_fingerprint(index) == wanted
        except IndexFileError:
            return False
    return False


def load_trained_index(path: PathLike) -> tuple[faiss.Index, str]:
    """Read a trained index and return it with its fingerprint (sha256 of the file).

    If the file has a manifest, the fingerprint must match it (the file was not
    replaced after the manifest was written).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise IndexFileError(f"{p}: cannot read trained index: {e.strerror}") from e
    fp = fingerprint_bytes(data)
    if mf.manifest_path(p).exists() and mf.load_manifest(p, TrainedManifest).fingerprint != fp:
        raise IndexFileError(f"{p}: file differs from its manifest (rewritten after it?)")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as e:
        raise IndexFileError(f"{p}: unreadable trained index") from e
    ivf = ivf_of(index, str(p))
    if not index.is_trained:
        raise IndexFileError(f"{p}: index is not trained")
    if index.ntotal != 0:
        raise IndexFileError(f"{p}: trained index must be empty, holds {index.ntotal} vectors")
    if ivf.quantizer.ntotal != ivf.nlist:
        raise IndexFileError(
            f"{p}: coarse quantizer holds {ivf.quantizer.ntotal} centroids, "
            f"nlist is {ivf.nlist}"
        )
    return index, fp


def file_fingerprint(path: PathLike) -> str:
    """sha256 of a file, streamed (what :func:`load_trained_index` computes)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
    except OSError as e:
        raise IndexFileError(f"{path}: cannot read trained index: {e.strerror}") from e
    return h.hexdigest()


def trained_candidates(
    parts: Iterable[tuple[Path, TrainedLink | None]], layout: Callable[[Path], Path]
) -> list[Path]:
    """Where to look for the trained index of parts (slices, shards) given as (path, the
    link their manifest records): where each link says, then the work directory layout,
    ``layout(root)`` being the trained index of a work dir at ``root``, with each part's
    folder and that folder's parent as the root."""
    parts = list(parts)
    cands: list[Path] = []
    for path, link in parts:
        cands += mf.linked_trained_paths(link, path)
    for d in dict.fromkeys(path.parent for path, _ in parts):
        cands += [layout(d), layout(d.parent)]
    return cands


def find_trained(candidates: Sequence[PathLike], wanted: str) -> tuple[Path | None, list[str]]:
    """The first candidate file that is the trained index ``wanted`` (a fingerprint),
    and, for error messages, each candidate tried before it with why it was not."""
    tried: list[str] = []
    seen: set[str] = set()
    for cand in map(Path, candidates):
        key = os.path.abspath(cand)
        if key in seen:
            continue
        seen.add(key)
        if not cand.is_file():
            tried.append(f"{cand} (no such file)")
            continue
        try:
            if wanted.startswith(CONTENT_PREFIX):
                index, fp = load_trained_index(cand)
                ok = fingerprint_matches(index, fp, wanted)
            else:
                fp = file_fingerprint(cand)
                ok = fp == wanted
        except IndexFileError as e:
            tried.append(f"{cand} (unusable: {e})")
            continue
        if ok:
            return cand, tried
        tried.append(f"{cand} (another trained index, fingerprint {fp[:12]})")
    return None, tried


def load_centroids(path: PathLike) -> np.ndarray:
    try:
        c = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise VectorFileError(f"{path}: cannot read centroids .npy: {e}") from e
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise VectorFileError(f"{path}: centroids must be a k x d array, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.floating):
        raise VectorFileError(f"{path}: centroids must be floating point, got {c.dtype}")
    c = np.ascontiguousarray(c, dtype=np.float32)
    if not np.isfinite(c).all():
        bad = int(np.flatnonzero(~np.isfinite(c).all(axis=1))[0])
        raise VectorFileError(f"{path}: centroid {bad} has NaN or infinite components")
    return c
