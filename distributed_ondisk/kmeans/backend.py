"""Which ``DatasetAssign`` backend ``--gpu``/``--backend`` ask for, decided and
checked before any data is read (a missing torch or GPU is reported at once,
not after a long NaN scan of the slice), then built.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.extras import missing_modules, require
from distributed_ondisk.kmeans.cpu import CPUAssign
from distributed_ondisk.kmeans.source import RowSource

log = logging.getLogger(__name__)


def faiss_gpu_count() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def torch_cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


#: ``--backend`` values: auto = faiss GPU, else torch CUDA, else faiss CPU.
BACKENDS = ("auto", "faiss", "torch")


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """What :func:`make_dataset` will build, decided without touching the data."""

    kind: str  # "cpu", "faiss-gpu" or "torch"
    devices: tuple = ()  # faiss-gpu: (gpu,) with -1 = all; torch: ("cuda:0", ...)

    def describe(self) -> str:
        return self.kind + (f" on {', '.join(map(str, self.devices))}" if self.devices else "")


def _torch_cuda_choice(gpu: int | None, nt: int) -> BackendChoice:
    if gpu is not None and gpu >= nt:
        raise InputError(f"--gpu {gpu}: torch sees only {nt} GPU(s)")
    if gpu is not None and gpu >= 0:
        return BackendChoice("torch", (f"cuda:{gpu}",))
    return BackendChoice("torch", tuple(f"cuda:{g}" for g in range(nt)))


def choose_backend(gpu: int | None = None, backend: str = "auto") -> BackendChoice:
    """The backend for ``--gpu``/``--backend``, checked before any data is read.

    ``gpu``: None = GPUs if there are any, else the CPU; -2 = CPU; -1 = all GPUs;
    ``i`` = GPU i.  ``backend``: "auto" prefers faiss GPU over torch CUDA over
    faiss CPU; "faiss" uses faiss only; "torch" uses torch only, on the CPU
    device with ``--gpu -2`` (or when there is no CUDA device and none was asked).
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if gpu is not None and gpu < -2:
        raise InputError(f"--gpu must be -2 (none), -1 (all) or a GPU number, got {gpu}")
    if backend == "torch":
        require("torch", "--backend torch")
        if gpu == -2:
            return BackendChoice("torch", ("cpu",))
        nt = torch_cuda_count()
        if nt:
            return _torch_cuda_choice(gpu, nt)
        if gpu is not None:
            raise InputError(
                f"--backend torch --gpu {gpu}: torch sees no CUDA device "
                "(use --gpu -2 for torch on the CPU)"
            )
        return BackendChoice("torch", ("cpu",))
    if gpu == -2:
        return BackendChoice("cpu")
    nf = faiss_gpu_count()
    if nf:
        if gpu is not None and gpu >= nf:
            raise InputError(f"--gpu {gpu}: faiss sees only {nf} GPU(s)")
        return BackendChoice("faiss-gpu", (-1 if gpu is None else gpu,))
    if backend == "faiss":
        if gpu is not None:
            raise InputError(
                f"--backend faiss --gpu {gpu}: the installed faiss has no GPU "
                "support (install faiss-gpu, or use --gpu -2)"
            )
        return BackendChoice("cpu")
    nt = torch_cuda_count()
    if nt:
        return _torch_cuda_choice(gpu, nt)
    if gpu is not None:
        if missing_modules("torch"):
            raise InputError(
                f"--gpu {gpu} asked for a GPU, but faiss has no GPU support and "
                "torch, the other GPU backend, is not installed: "
                "pip install 'distributed_ondisk[torch]' (or use --gpu -2)"
            )
        raise InputError(
            f"--gpu {gpu} asked for a GPU, but none is usable: faiss has no GPU "
            "support and torch sees no CUDA device (use --gpu -2 for the CPU)"
        )
    return BackendChoice("cpu")


def build_dataset(
    choice: BackendChoice,
    source: RowSource,
    nthreads: int | None = None,
    bound_bytes: int | None = None,
) -> Any:
    """The ``DatasetAssign`` of a :func:`choose_backend` answer over ``source``
    (``bound_bytes``: memory of the CPU backend's bounds, None = its default)."""
    log.info("k-means backend: %s", choice.describe())
    if choice.kind == "cpu":
        if bound_bytes is None:
            return CPUAssign(source, nthreads)
        return CPUAssign(source, nthreads, bound_bytes=bound_bytes)
    if choice.kind == "faiss-gpu":
        from distributed_ondisk.kmeans.gpu import FaissGPUAssign

        return FaissGPUAssign(source, int(choice.devices[0]), nthreads)
    assert choice.kind == "torch" and choice.devices, choice
    from distributed_ondisk.kmeans.gpu import TorchAssign

    if len(choice.devices) == 1:
        return TorchAssign(source, str(choice.devices[0]), nthreads=nthreads)
    from distributed_ondisk.kmeans.shards import ShardedAssign

    cuts = np.linspace(0, source.n, len(choice.devices) + 1).astype(np.int64)
    return ShardedAssign(
        [
            TorchAssign(source.subrange(int(a), int(b)), str(dev))
            for dev, a, b in zip(choice.devices, cuts[:-1], cuts[1:])
        ]
    )


def make_dataset(
    source: RowSource, gpu: int | None = None, nthreads: int | None = None, backend: str = "auto"
) -> Any:
    """:func:`build_dataset` of :func:`choose_backend` (see there for ``gpu``/``backend``)."""
    return build_dataset(choose_backend(gpu, backend), source, nthreads)
