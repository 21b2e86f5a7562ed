"""Stage 2: the empty trained index from k-means centroids and a training sample.

Structure: ``[transform ->] IVF<k>_HNSW32, <encoder>``.  The transform (random
rotation, PCA or OPQ) is applied to the centroids *and* the data (it is part of
the index), the centroids become the content of an HNSW coarse quantizer, and
the encoder (SQ6 by default) is trained on the transformed sample rows.  The
file and its fingerprint belong to :mod:`distributed_ondisk.ondisk.trained`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import InputError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import structure_digest
from distributed_ondisk.ondisk.schema import TrainedManifest
from distributed_ondisk.ondisk.trained import fingerprint_bytes, load_centroids
from distributed_ondisk.ranges import resolve_range

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


SQ_TYPES = {
    "SQ4": faiss.ScalarQuantizer.QT_4bit,
    "SQ6": faiss.ScalarQuantizer.QT_6bit,
    "SQ8": faiss.ScalarQuantizer.QT_8bit,
    "SQfp16": faiss.ScalarQuantizer.QT_fp16,
}


ROTATIONS = ("random", "pca", "opq", "none")


@dataclass(frozen=True)
class TrainedIndexConfig:
    encoder: str = "SQ6"  # SQ4 | SQ6 | SQ8 | SQfp16 | PQ<m>[x<nbits>]
    rotation: str = "random"  # random | pca | opq | none
    seed: int = 1234  # random rotation seed
    hnsw_m: int = 32
    ef_construction: int = 200  # faiss's default 40 gives a poorer graph over centroids
    ef_search: int = 128
    opq_m: int | None = None  # OPQ sub-spaces (default: PQ's m, else d/4)


def parse_encoder(spec: str) -> tuple[str, Any]:
    """``SQ6`` -> ("sq", qtype); ``PQ16`` / ``PQ16x8`` -> ("pq", (16, 8))."""
    if spec in SQ_TYPES:
        return "sq", SQ_TYPES[spec]
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", spec)
    if m:
        return "pq", (int(m.group(1)), int(m.group(2) or 8))
    raise InputError(f"encoder {spec!r}: expected one of {', '.join(SQ_TYPES)} or PQ<m>[x<nbits>]")


def _make_transform(
    cfg: TrainedIndexConfig, d: int, sample: np.ndarray, pq: tuple[int, int] | None
) -> faiss.VectorTransform | None:
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


def build_trained_index(
    centroids: np.ndarray, sample: np.ndarray, cfg: TrainedIndexConfig
) -> faiss.Index:
    """The empty trained index (in memory) for these centroids and this sample."""
    if cfg.rotation not in ROTATIONS:
        raise InputError(f"rotation {cfg.rotation!r}: expected one of {', '.join(ROTATIONS)}")
    kind, enc = parse_encoder(cfg.encoder)
    k, d = centroids.shape
    if sample.shape[1] != d:
        raise InputError(f"centroids have dimension {d} but the data has {sample.shape[1]}")
    min_rows = (1 << enc[1]) if kind == "pq" else 2
    if len(sample) < min_rows:
        raise InputError(
            f"training sample has {len(sample)} rows; {cfg.encoder} needs at " f"least {min_rows}"
        )
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
    ivf.train(sample)  # the quantizer is full, so only the encoder trains
    if vt is None:
        index = ivf
    else:
        index = faiss.IndexPreTransform(vt, ivf)
        index.own_fields = True
        vt.this.disown()
        ivf.this.disown()
    if not index.is_trained or index.ntotal != 0 or ivf.quantizer.ntotal != k:
        raise RuntimeError("built index is not trained and empty")  # a faiss or a build bug
    return index


def describe(cfg: TrainedIndexConfig, k: int, d: int) -> str:
    pre = {"random": f"RR{d},", "pca": f"PCA{d},", "opq": "OPQ,", "none": ""}[cfg.rotation]
    return f"{pre}IVF{k}_HNSW{cfg.hnsw_m},{cfg.encoder}"


def make_trained_index(
    centroids_path: PathLike,
    data_path: PathLike,
    out: PathLike,
    cfg: TrainedIndexConfig = TrainedIndexConfig(),
    i0: int | None = None,
    i1: int | None = None,
    force: bool = False,
) -> TrainedManifest:
    """Build, check and atomically write the trained index with its manifest; returns it."""
    from distributed_ondisk.vectors import open_vectors

    parse_encoder(cfg.encoder)
    centroids = load_centroids(centroids_path)
    vf = open_vectors(data_path)
    k, d = centroids.shape
    if vf.d != d:
        raise InputError(
            f"centroids {centroids_path} have dimension {d} but data {data_path} " f"has {vf.d}"
        )
    if k > vf.n:
        raise InputError(f"{k} centroids for only {vf.n} data rows in {data_path}")
    s0, s1 = resolve_range(vf.n, i0, i1, None, None, "sample rows")
    params = {"centroids_digest": mf.file_digest(centroids_path), "sample": [s0, s1], **asdict(cfg)}
    out = Path(out)
    mf.remove_stale_for(out)
    if not force and mf.is_complete(out, TrainedManifest, params):
        log.info("%s is complete, skipping (use --force to rebuild)", out)
        return mf.load_manifest(out, TrainedManifest)
    log.info("training %s on sample rows [%d, %d) of %s", describe(cfg, k, d), s0, s1, data_path)
    index = build_trained_index(centroids, vf.read(s0, s1), cfg)
    data = faiss.serialize_index(index)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data.tobytes())
    ivf = faiss.extract_index_ivf(index)
    m = TrainedManifest(
        params=params,
        fingerprint=fingerprint_bytes(data),
        structure=structure_digest(index),
        description=describe(cfg, k, d),
        d=d,
        nlist=k,
        data=os.path.abspath(data_path),
        data_rows=vf.n,
        code_size=int(ivf.code_size),
    )
    m = mf.write_manifest(out, m, {"index": out})
    log.info("wrote %s (%s, %d bytes)", out, m.description, len(data))
    return m
