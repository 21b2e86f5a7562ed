"""Row-exact pre-transforms: a row's transformed bytes depend only on the row and on its
global position, never on the block it was read in (so slices are byte-identical
however a range is cut)."""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

log = logging.getLogger(__name__)


CHUNK_ROWS = 256  # rows per fixed-shape product (a 256 x d tile stays in L2 cache)


_blas: ThreadpoolController | None = None


def _one_blas_thread() -> Any:
    """Context limiting every loaded BLAS to one thread (the controller is built once:
    scanning the loaded libraries costs 0.4 ms, a limit 15 us)."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


class _RowExactLinear:
    """``y = x A^T + b`` where each row's bytes depend only on the row and on its
    position modulo :data:`CHUNK_ROWS`, never on how many rows come with it.

    faiss's ``apply`` calls sgemm on the whole block, and BLAS picks its blocking
    and its thread split from the matrix shape, so the last bit of a row changes
    with the block size (measured: about half of the rows), and with it some SQ
    codes.  Here every product has the same shape: rows are copied at their
    position ``row % CHUNK_ROWS`` into one reused, zero-padded ``(CHUNK_ROWS,
    d_in)`` buffer and multiplied on one BLAS thread, so each row always takes
    the same path through the kernel (GEMM never mixes rows).  That is as fast as
    sgemm on whole blocks, unlike a per-element product (8x slower, measured).
    """

    def __init__(self, lt: faiss.LinearTransform) -> None:
        self.at = np.ascontiguousarray(faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in).T)
        self.bias = faiss.vector_to_array(lt.b) if lt.have_bias else None
        self.buf = np.zeros((CHUNK_ROWS, lt.d_in), dtype=np.float32)
        self.prod = np.empty((CHUNK_ROWS, lt.d_out), dtype=np.float32)

    def __call__(self, x: np.ndarray, first_row: int) -> np.ndarray:
        y = np.empty((len(x), self.at.shape[1]), dtype=np.float32)
        i = 0
        with _one_blas_thread():
            while i < len(x):
                pos = (first_row + i) % CHUNK_ROWS
                take = min(len(x) - i, CHUNK_ROWS - pos)
                if take < CHUNK_ROWS:  # a full chunk overwrites every row
                    self.buf[:] = 0
                self.buf[pos : pos + take] = x[i : i + take]
                np.matmul(self.buf, self.at, out=self.prod)
                y[i : i + take] = self.prod[pos : pos + take]
                i += take
        if self.bias is not None:
            y += self.bias  # elementwise: row-exact
        return y


def transform_rows(
    index: faiss.Index, x: np.ndarray, first_row: int = 0
) -> tuple[faiss.Index, np.ndarray]:
    """(index to add to, vectors to add): the pre-transforms applied row-exactly
    (see :class:`_RowExactLinear`); ``first_row`` is the global number of ``x[0]``."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform):
        return index, x
    for i in range(index.chain.size()):
        vt = faiss.downcast_VectorTransform(index.chain.at(i))
        if isinstance(vt, faiss.LinearTransform):
            x = _RowExactLinear(vt)(x, first_row)
        else:
            log.warning(
                "%s is not linear: applied by faiss, bytes may depend on block size",
                type(vt).__name__,
            )
            x = vt.apply(x)
    return faiss.downcast_index(index.index), x
