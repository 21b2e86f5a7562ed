"""Measured speeds the cost model runs on, and where they are stored.

Every rate is *per core* (or per GPU, per process) at a reference shape; the
model scales it to the planned shape (see :mod:`distributed_ondisk.plan.model`).
The shipped defaults describe a typical 2023 CPU node (AVX-512 server cores,
NVMe, 25 Gb/s), with figures taken from runs of this project's code on a
Zen 4 machine (docs/FAISS_FACTS.md) rounded down; the GPU figure is the torch
backend's exact assignment + sums, 1M x 96 vs k=4096 in ~32 ms on one H100.
``plan --calibrate`` replaces them by measurements of the machine it runs on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.errors import InputError
from distributed_ondisk.stages.train import TrainedIndexConfig

ENV_CALIBRATION = "DISTRIBUTED_ONDISK_CALIBRATION"
#: The HNSW efSearch at which quantization is calibrated (the trained index's default,
#: so a default plan needs no scaling); the model scales ``quant_us_per_query`` from it.
REF_EF_SEARCH = TrainedIndexConfig.ef_search


@dataclasses.dataclass(frozen=True)
class Rates:
    # k-means: exact assignment + per-centroid sums, counted as 2*n*k*d flop
    assign_gflops_per_core: float = 50.0
    gpu_assign_gflops: float = 2.0 * 1e6 * 4096 * 96 / 0.032 / 1e9  # H100, torch backend
    gpu_mem_gb: float = 80.0
    pcie_gbs: float = 20.0  # host -> GPU when a slice is not resident
    # vslices: add to IVF<nlist>_HNSW32,<SQ> (transform + HNSW assignment + encoding)
    add_vps_per_core: float = 12000.0
    add_ref_nlist: int = 16384
    add_ref_d: int = 96
    # trained index: centroids added to the HNSW32 quantizer (efConstruction 200)
    hnsw_build_vps_per_core: float = 2500.0
    hnsw_ref_nlist: int = 16384
    hnsw_ref_d: int = 96
    # trained index: sample rows per second per core for the encoder's residual training
    train_vps_per_core: float = 40000.0
    # merge: bytes of lists written per second by one merge process (read + write)
    merge_mbps: float = 600.0
    merge_job_s: float = 0.5  # fixed cost of one merge job (checks, manifests, fsync)
    # RPC: payload MB/s of one connection (framing + socket), large arrays
    rpc_mbps: float = 1500.0
    # client side of k-means: float64 replies added per second (memory-bound)
    reduce_mbps: float = 3000.0
    # search: one core; quantization (HNSW at REF_EF_SEARCH) per query and scan per code
    quant_us_per_query: float = 150.0
    scan_ns_per_code: float = 60.0
    search_ref_nlist: int = 16384
    search_ref_d: int = 96
    search_ref_code_size: int = 72
    # storage: sequential MB/s of one node (reading the data, writing slices)
    disk_read_mbps: float = 1500.0
    disk_write_mbps: float = 1000.0
    source: str = "defaults (typical CPU node, H100 for GPU figures)"

    def replace(self, **kw: Any) -> Rates:
        return dataclasses.replace(self, **kw)


DEFAULT_RATES = Rates()


def default_path() -> Path:
    env = os.environ.get(ENV_CALIBRATION)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distributed_ondisk" / "calibration.json"


def save_rates(rates: Rates, path: os.PathLike | None = None) -> Path:
    p = Path(path) if path else default_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(dataclasses.asdict(rates), indent=1) + "\n")
    return p


def load_rates(path: os.PathLike | None = None, *, missing_ok: bool = True) -> Rates:
    """Rates from a calibration JSON; the defaults when there is none (and ``missing_ok``).

    Unknown keys are refused (a file from another tool), missing keys keep
    their defaults (a file from an older version).
    """
    p = Path(path) if path else default_path()
    if not p.exists():
        if missing_ok:
            return DEFAULT_RATES
        raise InputError(f"{p}: no calibration file (run `plan --calibrate`)")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable calibration JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InputError(f"{p}: calibration must be a JSON object")
    names = {f.name: f.type for f in dataclasses.fields(Rates)}
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise InputError(f"{p}: unknown calibration keys {unknown}")
    kw: dict[str, Any] = {}
    for k, v in doc.items():
        if k == "source":
            kw[k] = str(v)
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise InputError(f"{p}: {k} must be a positive number, got {v!r}")
        kw[k] = v
    return DEFAULT_RATES.replace(**kw)
