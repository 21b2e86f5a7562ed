"""The index key: parsed when given, otherwise chosen from the data size and the
memory budget, with the reasoning returned as lines for the log and the infos.

Only what the build stages make is accepted: ``[RR<d>|PCA<d>|OPQ,]IVF<nlist>_HNSW<M>,
<SQ4|SQ6|SQ8|SQfp16|PQ<m>[x<nbits>]>`` (the index ``trained_index.describe`` names).
Sizes are estimated as faiss stores them: per vector its code and an 8-byte
id; the coarse quantizer's centroids and HNSW links; the transform matrix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.loop import MIN_POINTS_PER_CENTROID
from distributed_ondisk.ondisk.indexfile import IDX_BYTES
from distributed_ondisk.plan.workload import code_size
from distributed_ondisk.stages.train import TrainedIndexConfig, describe, parse_encoder

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_KEY = re.compile(
    r"(?:(RR|PCA)(\d+)?,|(OPQ)\d*(?:_\d+)?,)?IVF(\d+)_HNSW(\d+),"
    r"(SQ4|SQ6|SQ8|SQfp16|PQ\d+(?:x\d+)?)"
)
_ROTATION = {"RR": "random", "PCA": "pca", "OPQ": "opq", None: "none"}


def parse_memory(text: str | int) -> int:
    """``"16G"``, ``"500M"``, ``"1.5GB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", str(text).upper())
    if not m:
        raise InputError(
            f"memory amount {text!r}: expected a number with an optional "
            "K/M/G/T suffix, e.g. '16G'"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True)
class IndexSpec:
    nlist: int
    cfg: TrainedIndexConfig

    def key(self, d: int) -> str:
        return describe(self.cfg, self.nlist, d)


def parse_index_key(key: str, d: int) -> IndexSpec:
    m = _KEY.fullmatch(key.strip())
    if not m:
        raise InputError(
            f"index_key {key!r} is not one this build makes: expected "
            "[RR<d>|PCA<d>|OPQ,]IVF<nlist>_HNSW<M>,<SQ4|SQ6|SQ8|SQfp16|PQ<m>>, "
            "e.g. 'RR64,IVF1024_HNSW32,SQ8'"
        )
    rot = m.group(1) or m.group(3)
    if m.group(2) and int(m.group(2)) != d:
        raise InputError(f"index_key {key!r}: {rot}{m.group(2)} must keep the dimension d={d}")
    kind, enc = parse_encoder(m.group(6))
    if kind == "pq" and d % enc[0]:
        raise InputError(f"index_key {key!r}: PQ m={enc[0]} must divide d={d}")
    cfg = TrainedIndexConfig(encoder=m.group(6), rotation=_ROTATION[rot], hnsw_m=int(m.group(5)))
    nlist = int(m.group(4))
    if nlist < 1:
        raise InputError(f"index_key {key!r}: nlist must be >= 1")
    return IndexSpec(nlist, cfg)


def estimate_index_bytes(n: int, d: int, spec: IndexSpec) -> dict[str, int]:
    """Bytes of the finished index: lists (codes + ids), quantizer, transform."""
    lists = n * (code_size(spec.cfg.encoder, d) + IDX_BYTES)
    quantizer = spec.nlist * (4 * d + 2 * spec.cfg.hnsw_m * 4 + 8)
    transform = 4 * d * d if spec.cfg.rotation != "none" else 0
    return {
        "lists": lists,
        "quantizer": quantizer,
        "transform": transform,
        "total": lists + quantizer + transform,
    }


def choose_nlist(n: int) -> tuple[int, str]:
    """A power of two near 4 sqrt(n), with at least ``MIN_POINTS_PER_CENTROID`` training
    points per list (faiss's warning bound, as k-means logs it)."""
    target = 4 * math.sqrt(n)
    nlist = 1 << max(0, round(math.log2(max(target, 1))))
    while nlist > 1 and n / nlist < MIN_POINTS_PER_CENTROID:
        nlist //= 2
    return nlist, (
        f"nlist={nlist}: power of two near 4*sqrt(n)={target:.0f} with >= "
        f"{MIN_POINTS_PER_CENTROID} vectors per list ({n / nlist:.0f})"
    )


def _encoders(d: int) -> list[str]:
    """Candidate encoders, most precise first."""
    pqs = [f"PQ{m}" for m in (d // 2, d // 4, d // 8, d // 16) if m >= 1 and d % m == 0]
    return ["SQfp16", "SQ8", "SQ6", "SQ4", *dict.fromkeys(pqs)]


def choose_index_key(
    n: int, d: int, max_index_memory_usage: int, index_key: str | None = None
) -> tuple[IndexSpec, list[str]]:
    """(spec, reasoning lines).  A given key is checked against the budget, not changed."""
    if index_key:
        spec = parse_index_key(index_key, d)
        est = estimate_index_bytes(n, d, spec)
        why = [f"index_key {spec.key(d)} given: estimated {est['total'] / 2**20:.1f} MiB"]
        if spec.nlist > n:
            raise InputError(f"index_key {index_key!r}: nlist {spec.nlist} > {n} vectors")
        if est["total"] > max_index_memory_usage:
            raise InputError(
                f"index_key {index_key!r} needs about {est['total'] / 2**20:.1f} "
                f"MiB, over max_index_memory_usage "
                f"{max_index_memory_usage / 2**20:.1f} MiB"
            )
        return spec, why
    nlist, why_nlist = choose_nlist(n)
    why = [why_nlist]
    for enc in _encoders(d):
        spec = IndexSpec(nlist, TrainedIndexConfig(encoder=enc, rotation="random"))
        est = estimate_index_bytes(n, d, spec)
        fits = est["total"] <= max_index_memory_usage
        why.append(
            f"{spec.key(d)}: {code_size(enc, d)} bytes/vector, estimated "
            f"{est['total'] / 2**20:.1f} MiB {'<=' if fits else '>'} budget "
            f"{max_index_memory_usage / 2**20:.1f} MiB"
        )
        if fits:
            if enc.startswith("PQ") and n < 256 * 4:
                raise InputError(f"{enc} needs more training vectors than the {n} given")
            why.append(f"chosen {spec.key(d)}: the most precise encoder that fits")
            return spec, why
    raise InputError(
        f"no index fits max_index_memory_usage={max_index_memory_usage} bytes for "
        f"{n} vectors of d={d}: " + "; ".join(why[1:])
    )
