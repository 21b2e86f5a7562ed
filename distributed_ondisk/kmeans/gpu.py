"""GPU ``DatasetAssign`` backends (the choice between them: :mod:`.backend`).

* faiss GPU (when the installed faiss has GPU support): the CPU backend with
  its flat search done by a GPU flat index (one GPU, or all of them).
* torch (``--backend torch``, or when torch sees CUDA and faiss has no GPU
  support, e.g. a CUDA 13 machine where the faiss-gpu wheel cannot load):
  exact assignment by blocked matrix product ``|c|^2 - 2 x.c`` + min, with
  ``|x|^2`` added to the minimum only; the slice stays resident on the GPU when it fits; sums by
  ``index_add_`` in float64, counts by ``bincount``.  TF32 is switched off:
  it would change assignments compared with the CPU.  Everything but the
  residency and synchronisation also runs on torch's CPU device, which is how
  CI tests this backend, and gives a float64 reference.

Nothing here imports faiss at module level: the torch path works without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from distributed_ondisk.kmeans.base import AssignResult, check_centroids, check_weights
from distributed_ondisk.kmeans.cpu import RPC_METHODS, CPUAssign, LocalView
from distributed_ondisk.kmeans.source import RowSource

log = logging.getLogger(__name__)

#: Bytes of the (rows x k) distance matrix computed at once.
DIST_BLOCK_BYTES = 1 << 30
#: Share of free GPU memory the resident slice may take.
RESIDENT_FRACTION = 0.6


class FaissGPUAssign(CPUAssign):
    """The CPU backend with its searches on GPU ``gpu`` (-1: all GPUs)."""

    backend = "faiss-gpu"
    #: the bounds' matrix products run on the CPU: the GPU's full search is faster
    accelerated = False

    def __init__(
        self,
        source: RowSource,
        gpu: int = 0,
        nthreads: int | None = None,
        block_rows: int | None = None,
    ) -> None:
        import faiss

        super().__init__(source, nthreads, block_rows)
        flat = faiss.IndexFlatL2(source.d)
        if gpu >= 0:
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, gpu, flat)
        else:
            self.index = faiss.index_cpu_to_all_gpus(flat)

    def _searcher(
        self, centroids: np.ndarray
    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        self.index.reset()
        self.index.add(centroids)

        def search(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            D, I = self.index.search(xb, 1)
            return D.ravel(), I.ravel()

        return search


class TorchAssign:
    """Exact assignment with torch on ``device`` ("cuda:0", "cpu", ...) in ``dtype``."""

    RPC_METHODS = RPC_METHODS
    backend = "torch"
    #: no bounds here yet: assign_accel is assign_to (the loop then calls assign_to)
    accelerated = False

    def __init__(
        self,
        source: RowSource,
        device: str = "cuda:0",
        dtype: Any = None,
        block_rows: int | None = None,
        resident: bool | None = None,
        nthreads: int | None = None,
    ) -> None:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.torch = torch
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.view = LocalView(source, block_rows)
        self.resident = resident
        self.nthreads = nthreads  # CPU device only: torch's intra-op threads
        self._blocks: list | None = None  # [(start, x on device, |x|^2)] when resident
        self._generation = 0  # bumped by select(): stale passes keep nothing

    # -- data on the device ----------------------------------------------------
    def _fits(self) -> bool:
        if self.resident is not None:
            return self.resident
        if self.device.type != "cuda":
            return False
        free, _ = self.torch.cuda.mem_get_info(self.device)
        elem = self.torch.tensor([], dtype=self.dtype).element_size()
        return self.count() * (self.dim() + 1) * elem < RESIDENT_FRACTION * free

    def _to_device(self, xb: np.ndarray) -> tuple[Any, Any]:
        x = self.torch.from_numpy(np.ascontiguousarray(xb)).to(self.device, self.dtype)
        return x, (x * x).sum(1)

    def _device_blocks(self):
        if self._blocks is not None:
            yield from self._blocks
            return
        keep, generation = self._fits(), self._generation
        kept = []
        for a, xb in self.view.blocks():
            x, xn = self._to_device(xb)
            if keep:
                kept.append((a, x, xn))
            yield a, x, xn
        if keep and generation == self._generation:
            self._blocks = kept
            log.info("slice resident on %s (%d rows)", self.device, self.count())

    # -- protocol ---------------------------------------------------------------
    def count(self) -> int:
        return self.view.count()

    def dim(self) -> int:
        return self.source.d

    def describe(self) -> dict:
        return {
            "backend": f"{self.backend}:{self.device}",
            "source": self.source.describe(),
            "n": self.source.n,
            "d": self.source.d,
            "count": self.count(),
            "accelerated": self.accelerated,
        }

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self.view.get_subset(indices)

    def select(self, indices: np.ndarray | None) -> int:
        if indices is None and self.view.selected is None:
            return self.count()  # nothing changes: keep the resident copy
        self._generation += 1
        self._blocks = None
        return self.view.select(indices)

    def _nearest(self, x: Any, xn: Any, c: Any, cn: Any) -> tuple[Any, Any]:
        """(squared distance, id) of the nearest centroid of each row of ``x``."""
        torch = self.torch
        step = max(1, DIST_BLOCK_BYTES // (4 * c.shape[0]))
        Ds, Is = [], []
        for r in range(0, x.shape[0], step):
            dist = torch.addmm(cn, x[r : r + step], c.T, beta=1, alpha=-2)
            val, idx = dist.min(dim=1)
            Ds.append(val + xn[r : r + step])
            Is.append(idx)
        return torch.cat(Ds), torch.cat(Is)

    def _centroids(self, centroids: np.ndarray) -> tuple[Any, Any]:
        if self.nthreads and self.device.type == "cpu":
            # Set in the calling thread, as the CPU backend does: an RPC server calls
            # from a connection thread, and servers sharing a machine must not each
            # take every core.
            self.torch.set_num_threads(int(self.nthreads))
        c = self.torch.from_numpy(check_centroids(centroids, self.dim())).to(
            self.device, self.dtype
        )
        return c, (c * c).sum(1)

    def bare_search(self, centroids: np.ndarray) -> None:
        """The compute bound of assign_to: matmul + min over the slice, nothing else."""
        c, cn = self._centroids(centroids)
        for _, x, xn in self._device_blocks():
            self._nearest(x, xn, c, cn)
        self._sync()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, cn = self._centroids(centroids)
        Ds, Is = [np.empty(0, np.float32)], [np.empty(0, np.int64)]
        for _, x, xn in self._device_blocks():
            D, I = self._nearest(x, xn, c, cn)
            Ds.append(D.float().cpu().numpy())
            Is.append(I.cpu().numpy())
        return np.concatenate(Ds)[:, None], np.concatenate(Is)[:, None]

    def _reduce(self, centroids: np.ndarray, weights: np.ndarray | None, keep_ids: bool):
        torch = self.torch
        c, cn = self._centroids(centroids)
        w = check_weights(weights, self.count())
        k = c.shape[0]
        sums = torch.zeros((k, self.dim()), dtype=torch.float64, device=self.device)
        counts = torch.zeros(k, dtype=torch.int64, device=self.device)
        obj = torch.zeros((), dtype=torch.float64, device=self.device)
        ids, dists = [], []
        for a, x, xn in self._device_blocks():
            D, I = self._nearest(x, xn, c, cn)
            rows = x.to(torch.float64)
            if w is not None:
                rows = (
                    rows
                    * torch.from_numpy(w[a : a + len(x)]).to(self.device, torch.float64)[:, None]
                )
            sums.index_add_(0, I, rows)
            counts += torch.bincount(I, minlength=k)
            obj += D.sum(dtype=torch.float64)
            if keep_ids:
                ids.append(I.cpu().numpy())
                dists.append(D.float().cpu().numpy())
        return sums, counts, obj, ids, dists

    def assign_to(self, centroids: np.ndarray, weights: np.ndarray | None = None) -> AssignResult:
        t0 = time.perf_counter()
        sums, counts, obj, _, _ = self._reduce(centroids, weights, False)
        return AssignResult(
            sums.cpu().numpy(), counts.cpu().numpy(), float(obj.item()), time.perf_counter() - t0
        )

    def assign_accel(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> AssignResult:
        return self.assign_to(centroids, weights)

    def assign_full(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sums, _, _, ids, dists = self._reduce(centroids, weights, True)
        return (
            np.concatenate([np.empty(0, np.int64)] + ids),
            np.concatenate([np.empty(0, np.float32)] + dists),
            sums.cpu().numpy().astype(np.float32),
        )
