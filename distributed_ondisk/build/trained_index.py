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
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import faiss
import numpy as np

from distributed_ondisk import manifest as mf
from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.build.plan import resolve_range
from distributed_ondisk.build.structure import ivf_of, structure_digest
from distributed_ondisk.errors import IndexFileError, InputError, VectorFileError

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
KIND = "trained_index"
SQ_TYPES = {"SQ4": faiss.ScalarQuantizer.QT_4bit, "SQ6": faiss.ScalarQuantizer.QT_6bit,
            "SQ8": faiss.ScalarQuantizer.QT_8bit, "SQfp16": faiss.ScalarQuantizer.QT_fp16}
ROTATIONS = ("random", "pca", "opq", "none")


@dataclass(frozen=True)
class TrainedIndexConfig:
    encoder: str = "SQ6"           # SQ4 | SQ6 | SQ8 | SQfp16 | PQ<m>[x<nbits>]
    rotation: str = "random"       # random | pca | opq | none
    seed: int = 1234               # random rotation seed
    hnsw_m: int = 32
    ef_construction: int = 200     # faiss's default 40 gives a poorer graph over centroids
    ef_search: int = 128
    opq_m: Optional[int] = None    # OPQ sub-spaces (default: PQ's m, else d/4)


def parse_encoder(spec: str) -> tuple[str, Any]:
    """``SQ6`` -> ("sq", qtype); ``PQ16`` / ``PQ16x8`` -> ("pq", (16, 8))."""
    if spec in SQ_TYPES:
        return "sq", SQ_TYPES[spec]
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", spec)
    if m:
        return "pq", (int(m.group(1)), int(m.group(2) or 8))
    raise InputError(f"encoder {spec!r}: expected one of {', '.join(SQ_TYPES)} or PQ<m>[x<nbits>]")


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
        raise IndexFileError(f"coarse quantizer holds {q.ntotal} centroids, nlist is "
                             f"{ivf.nlist}: no content fingerprint")
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
    if mf.manifest_path(p).exists():
        doc = mf.load_manifest(p, KIND)
        if doc.get("fingerprint") != fp:
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
        raise IndexFileError(f"{p}: coarse quantizer holds {ivf.quantizer.ntotal} centroids, "
                             f"nlist is {ivf.nlist}")
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


def find_trained(candidates: Sequence[PathLike], wanted: str) -> tuple[Optional[Path], list[str]]:
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


def _make_transform(cfg: TrainedIndexConfig, d: int, sample: np.ndarray,
                    pq: Optional[tuple[int, int]]) -> Optional[faiss.VectorTransform]:
    if cfg.rotation == "none":
        return None
    if cfg.rotation == "random":
        rr = faiss.RandomRotationMatrix(d, d)
        rr.init(cfg.seed)
        return rr
    if cfg.rotation == "pca":
        vt = faiss.PCAMatrix(d, d, 0, False)
    else:
        m = cfg.opq_m or (pq[0] if pq else max(1, d // 4))
        if d % m:
            raise InputError(f"OPQ with {m} sub-spaces needs it to divide d={d}")
        vt = faiss.OPQMatrix(d, m)
    vt.train(sample)
    return vt


def build_trained_index(centroids: np.ndarray, sample: np.ndarray,
                        cfg: TrainedIndexConfig) -> faiss.Index:
    """The empty trained index (in memory) for these centroids and this sample."""
    if cfg.rotation not in ROTATIONS:
        raise InputError(f"rotation {cfg.rotation!r}: expected one of {', '.join(ROTATIONS)}")
    kind, enc = parse_encoder(cfg.encoder)
    k, d = centroids.shape
    if sample.shape[1] != d:
        raise InputError(f"centroids have dimension {d} but the data has {sample.shape[1]}")
    min_rows = (1 << enc[1]) if kind == "pq" else 2
    if len(sample) < min_rows:
        raise InputError(f"training sample has {len(sample)} rows; {cfg.encoder} needs at "
                         f"least {min_rows}")
    if kind == "pq" and d % enc[0]:
        raise InputError(f"{cfg.encoder}: m={enc[0]} must divide d={d}")
    vt = _make_transform(cfg, d, sample, enc if kind == "pq" else None)
    if vt is not None:
        centroids = vt.apply(centroids)
        sample = vt.apply(sample)
    quantizer = faiss.IndexHNSWFlat(d, cfg.hnsw_m)
    quantizer.hnsw.efConstruction = cfg.ef_construction
    quantizer.add(centroids)
    quantizer.hnsw.efSearch = cfg.ef_search
    if kind == "sq":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, k, enc, faiss.METRIC_L2)
    else:
        ivf = faiss.IndexIVFPQ(quantizer, d, k, enc[0], enc[1])
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.train(sample)          # the quantizer is full, so only the encoder trains
    if vt is None:
        index = ivf
    else:
        index = faiss.IndexPreTransform(vt, ivf)
        index.own_fields = True
        vt.this.disown()
        ivf.this.disown()
    if not index.is_trained or index.ntotal != 0 or ivf.quantizer.ntotal != k:
        raise IndexFileError("internal: built index is not trained and empty")
    return index


def describe(cfg: TrainedIndexConfig, k: int, d: int) -> str:
    pre = {"random": f"RR{d},", "pca": f"PCA{d},", "opq": "OPQ,", "none": ""}[cfg.rotation]
    return f"{pre}IVF{k}_HNSW{cfg.hnsw_m},{cfg.encoder}"


def make_trained_index(centroids_path: PathLike, data_path: PathLike, out: PathLike,
                       cfg: TrainedIndexConfig = TrainedIndexConfig(),
                       i0: Optional[int] = None, i1: Optional[int] = None,
                       force: bool = False) -> dict[str, Any]:
    """Build, check and atomically write the trained index with its manifest."""
    from distributed_ondisk.vectors import open_vectors

    parse_encoder(cfg.encoder)
    centroids = load_centroids(centroids_path)
    vf = open_vectors(data_path)
    k, d = centroids.shape
    if vf.d != d:
        raise InputError(f"centroids {centroids_path} have dimension {d} but data {data_path} "
                         f"has {vf.d}")
    if k > vf.n:
        raise InputError(f"{k} centroids for only {vf.n} data rows in {data_path}")
    s0, s1 = resolve_range(vf.n, i0, i1, None, None, "sample rows")
    params = {"centroids_digest": mf.file_digest(centroids_path), "sample": [s0, s1],
              **asdict(cfg)}
    out = Path(out)
    mf.remove_stale_for(out)
    if not force and mf.is_complete(out, KIND, params):
        log.info("%s is complete, skipping (use --force to rebuild)", out)
        return mf.load_manifest(out, KIND)
    log.info("training %s on sample rows [%d, %d) of %s", describe(cfg, k, d), s0, s1, data_path)
    index = build_trained_index(centroids, vf.read(s0, s1), cfg)
    data = faiss.serialize_index(index)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data.tobytes())
    ivf = faiss.extract_index_ivf(index)
    doc = mf.write_manifest(out, KIND, {"index": out}, params=params,
                            fingerprint=fingerprint_bytes(data),
                            structure=structure_digest(index),
                            description=describe(cfg, k, d), d=d, nlist=k,
                            data=os.path.abspath(data_path), data_rows=vf.n,
                            code_size=int(ivf.code_size))
    log.info("wrote %s (%s, %d bytes)", out, doc["description"], len(data))
    return doc

