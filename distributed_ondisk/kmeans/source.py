"""Rows ``[i0, i1)`` of an in-RAM array or of a memory-mapped vector file, read
as float32 blocks of bounded size, with NaN/Inf refused naming the file and row.

Backends (CPU, torch, faiss GPU) read through this so that they never hold
more than one block of a file in RAM unless they choose to (a GPU keeps its
slice resident).  numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Union

import numpy as np

from distributed_ondisk.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


class RowSource:
    """A read-only row range of vectors; ``name`` says where they come from."""

    def __init__(
        self,
        data: np.ndarray | PathLike | object,
        i0: int = 0,
        i1: int | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(data, (str, os.PathLike)):
            from distributed_ondisk.vectors import open_vectors

            data = open_vectors(data)
        self._file = None if isinstance(data, np.ndarray) else data
        if self._file is None:
            arr = data
            if arr.ndim != 2:
                raise InputError(f"training vectors must be a 2-d array, got shape {arr.shape}")
            total, self.d = arr.shape
            self.name = name or f"<array {arr.shape[0]}x{arr.shape[1]}>"
            self._array = arr
        else:
            total, self.d = int(self._file.n), int(self._file.d)
            self.name = name or str(self._file.path)
        i1 = total if i1 is None else int(i1)
        if not 0 <= i0 <= i1 <= total:
            raise InputError(
                f"{self.name}: row range [{i0}, {i1}) is invalid: it has "
                f"{total} rows (need 0 <= i0 <= i1 <= {total})"
            )
        self.i0, self.i1 = int(i0), i1
        self.n = i1 - i0
        self._resident: np.ndarray | None = None  # float32 rows kept by check_finite

    def subrange(self, a: int, b: int) -> RowSource:
        """Local rows ``[a, b)`` of this range, same data."""
        data = self._array if self._file is None else self._file
        return RowSource(data, self.i0 + a, self.i0 + b, name=self.name)

    def describe(self) -> str:
        return f"{self.name} rows [{self.i0}, {self.i1})"

    def _checked(self, x: np.ndarray, first_row: int) -> np.ndarray:
        if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise InputError(f"{self.name}: row {first_row + bad} contains NaN or Inf")
        return x

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(local start row, float32 C-contiguous block)`` covering the range once."""
        if self._resident is not None:
            for a in range(0, self.n, block_rows):
                yield a, self._resident[a : a + block_rows]
            return
        if self._file is not None:
            for start, block in self._file.iter_blocks(self.i0, self.i1, block_rows=block_rows):
                yield start - self.i0, block
            return
        for a in range(0, self.n, block_rows):
            b = min(self.n, a + block_rows)
            raw = self._array[self.i0 + a : self.i0 + b]
            block = np.ascontiguousarray(raw, dtype=np.float32)
            yield a, self._checked(block, self.i0 + a)

    def take(self, local_rows: np.ndarray) -> np.ndarray:
        """float32 rows at these local row numbers (any order, repeats allowed)."""
        idx = np.asarray(local_rows, dtype=np.int64)
        if self._resident is not None:
            return self._resident[idx]
        if self._file is not None:
            raw = np.asarray(self._file.raw(self.i0, self.i1)[idx])
        else:
            raw = self._array[self.i0 + idx] if idx.size else self._array[:0]
        x = np.ascontiguousarray(raw, dtype=np.float32).reshape(len(idx), self.d)
        if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise InputError(f"{self.name}: row {self.i0 + int(idx[bad])} contains NaN or Inf")
        return x

    def check_finite(self, block_rows: int, keep_bytes: int = 0) -> None:
        """Read the whole range once; InputError/VectorFileError at the first NaN/Inf.

        A file range of at most ``keep_bytes`` (as float32) is kept in RAM by this
        pass: k-means reads it every iteration, and re-reading a memory map into
        fresh blocks costs a copy plus page faults per block each time (a third
        of an iteration on a container kernel), while the checked rows cannot change.
        """
        keep = self._file is not None and 0 < self.n * self.d * 4 <= keep_bytes
        rows = np.empty((self.n, self.d), np.float32) if keep else None
        for a, block in self.blocks(block_rows):
            if rows is not None:
                rows[a : a + len(block)] = block
        if rows is not None:
            self._resident = rows


def resident_budget_bytes(fraction: float = 0.5) -> int:
    """``fraction`` of the memory the kernel reports available (0 if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * fraction)
    except (OSError, ValueError):
        pass
    return 0
