"""What the cost model is asked about: the workload (data, index, search), the cluster,
the parallel layout, and the answer's records (one :class:`StageCost` per stage, the
:class:`Plan`).  The per-stage costs are in :mod:`distributed_ondisk.plan.costs`.
"""

from __future__ import annotations

import dataclasses

from distributed_ondisk.errors import InputError
from distributed_ondisk.ondisk.indexfile import IDX_BYTES
from distributed_ondisk.plan.rates import Rates
from distributed_ondisk.stages.train import parse_encoder
from distributed_ondisk.vectors.formats import BIN_DTYPES, VECS_DTYPES, VECS_HEADER_BYTES

GB = 1e9
MB = 1e6
RAM_USABLE = 0.8  # share of a node's RAM a plan may use
DISK_USABLE = 0.9
#: (bytes per component, bytes of row header) of each input format, from the vector
#: file tables; ``.npy`` is counted as float32 (what the pipeline writes).
FORMAT_BYTES = {
    **{fmt: (dt.itemsize, VECS_HEADER_BYTES) for fmt, dt in VECS_DTYPES.items()},
    "npy": (4, 0),
    **{fmt: (dt.itemsize, 0) for fmt, dt in BIN_DTYPES.items()},
}
SQ_BITS = {"SQ4": 4, "SQ6": 6, "SQ8": 8, "SQfp16": 16}


def code_size(encoder: str, d: int) -> int:
    """Bytes per vector of the encoder (faiss's code_size); the encoder names are the
    trained index's (:func:`~distributed_ondisk.stages.train.parse_encoder`)."""
    kind, enc = parse_encoder(encoder)
    if kind == "pq":
        return (enc[0] * enc[1] + 7) // 8
    return (SQ_BITS[encoder] * d + 7) // 8


@dataclasses.dataclass(frozen=True)
class Workload:
    n: int
    d: int
    fmt: str = "fvecs"
    nlist: int = 1 << 20
    encoder: str = "SQ6"
    niter: int = 20
    n_train: int | None = None  # rows given to k-means (default: all n)
    max_points_per_centroid: int = 256
    train_rows: int = 200_000  # sample for the trained index (encoder training)
    nq: int = 10_000
    nprobe: int = 64
    k: int = 100
    ef_search: int = 128

    def validate(self) -> None:
        for name in (
            "n",
            "d",
            "nlist",
            "nq",
            "nprobe",
            "k",
            "max_points_per_centroid",
            "train_rows",
            "ef_search",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.niter < 0:
            raise InputError(f"niter must be >= 0, got {self.niter}")
        if self.fmt not in FORMAT_BYTES:
            raise InputError(f"file format {self.fmt!r}: expected one of {', '.join(FORMAT_BYTES)}")
        if self.nlist > self.kmeans_rows:
            raise InputError(
                f"nlist={self.nlist} centroids need at least as many k-means "
                f"training rows, got {self.kmeans_rows}"
            )
        code_size(self.encoder, self.d)

    @property
    def row_bytes(self) -> int:
        comp, header = FORMAT_BYTES[self.fmt]
        return self.d * comp + header

    @property
    def kmeans_rows(self) -> int:
        return min(self.n, self.n_train or self.n)

    @property
    def code_size(self) -> int:
        return code_size(self.encoder, self.d)

    @property
    def entry_bytes(self) -> int:
        return self.code_size + IDX_BYTES

    @property
    def index_bytes(self) -> int:
        return self.n * self.entry_bytes


@dataclasses.dataclass(frozen=True)
class Cluster:
    nodes: int = 1
    cores: int = 32  # per node
    gpus: int = 0  # per node
    ram_gb: float = 256.0  # per node
    disk_gb: float = 4000.0  # local disk per node (hslices live there)
    net_gbps: float = 25.0  # per node NIC, gigabits/s
    remote: bool = True  # False: k-means in one process (no RPC)

    def validate(self) -> None:
        if self.nodes < 1 or self.cores < 1 or self.gpus < 0:
            raise InputError(
                f"need nodes >= 1, cores >= 1, gpus >= 0; got {self.nodes}, "
                f"{self.cores}, {self.gpus}"
            )
        if self.ram_gb <= 0 or self.disk_gb <= 0 or self.net_gbps <= 0:
            raise InputError("RAM, disk and network bandwidth must be positive")

    @property
    def net_Bps(self) -> float:
        return self.net_gbps * 1e9 / 8


@dataclasses.dataclass(frozen=True)
class Settings:
    """Parallel layout; None = let the planner choose."""

    kmeans_servers: int | None = None
    nvslices: int | None = None
    nhslices: int | None = None
    search_servers: int | None = None


@dataclasses.dataclass
class StageCost:
    name: str
    procs: int  # processes working in parallel
    bytes_read: float
    net_out: float  # bytes sent by the coordinating process (client)
    net_in: float  # bytes received by it
    ram_per_proc: float
    disk_written: float
    wall_s: float
    detail: str = ""
    flags: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
    workload: Workload
    cluster: Cluster
    settings: Settings  # resolved: no None left
    rates: Rates
    stages: list[StageCost]
    flags: list[str]

    @property
    def build_stages(self) -> list[StageCost]:
        return [s for s in self.stages if not s.name.startswith("search")]

    @property
    def build_s(self) -> float:
        return sum(s.wall_s for s in self.build_stages)

    @property
    def bottleneck(self) -> StageCost:
        return max(self.build_stages, key=lambda s: s.wall_s)

    def stage(self, name: str) -> StageCost:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"
