"""Memory-mapped reading of row ranges, validated block by block."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distributed_ondisk.errors import VectorFileError
from distributed_ondisk.vectors.formats import OPEN_HEADER_SAMPLES, Layout, probe

#: Default size of one float32 block yielded by :meth:`VectorFile.iter_blocks`.
BLOCK_BYTES = 64 << 20


class VectorFile:
    """A validated, memory-mapped vector file; rows are read only when asked for.

    ``n``, ``d``, ``format`` and the on-disk ``dtype`` are known after open.  The
    per-row dimension of ``*vecs`` files is sampled at open and checked for every
    row that :meth:`read` returns.  The file is kept open, and its size is checked
    before each read, so a file truncated after open raises an error instead of
    crashing the process with SIGBUS.
    """

    def __init__(self, path: os.PathLike | str, *, dtype_hint=None) -> None:
        self.layout: Layout = probe(path, dtype_hint)
        self.path: Path = self.layout.path
        self.n, self.d = self.layout.n, self.layout.d
        self.format: str = self.layout.format
        self.dtype: np.dtype = self.layout.dtype
        try:
            # open for the object's life (the memory map reads through it); close() or
            # the with-block closes it
            self._file = open(self.path, "rb")  # noqa: SIM115
        except OSError as e:
            raise VectorFileError(
                f"{self.path}: cannot open vector file: {e.strerror or e}"
            ) from None
        self._mm: np.ndarray | None = None
        if self.n:
            self._map()
            if self.layout.row_header:
                self._check_sampled_dims()

    def _map(self) -> None:
        L = self.layout
        if L.row_header:
            self._mm = np.memmap(
                self._file, dtype=L.record_dtype(), mode="r", offset=L.offset, shape=(L.n,)
            )
        else:
            self._mm = np.memmap(
                self._file,
                dtype=L.dtype,
                mode="r",
                offset=L.offset,
                shape=(L.n, L.d),
                order="F" if L.fortran else "C",
            )

    def _check_sampled_dims(self) -> None:
        # first, last and an even spread: catches a wrong-format or spliced file at open
        # for the price of ~1000 page reads; read() checks every row it returns.
        idx = np.unique(
            np.linspace(0, self.n - 1, min(self.n, OPEN_HEADER_SAMPLES + 1)).astype(np.int64)
        )
        self._check_dims(idx, self._mm["dim"][idx])

    def _check_dims(self, rows: np.ndarray | int, dims: np.ndarray) -> None:
        bad = np.flatnonzero(dims != self.d)
        if len(bad):
            i = bad[0]
            row = int(rows[i]) if isinstance(rows, np.ndarray) else rows + int(i)
            raise VectorFileError(
                f"{self.path}: row {row} declares dimension {int(dims[i])}, "
                f"but row 0 declares {self.d} (corrupt .{self.format} file)"
            )

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, n={self.n}, d={self.d}, dtype={self.dtype})"

    def close(self) -> None:
        self._mm = None
        self._file.close()

    # typing.Self needs Python 3.11 (we support 3.10) and typing_extensions is no
    # dependency; the class is not meant to be subclassed
    def __enter__(self) -> VectorFile:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _range(self, i0, i1) -> tuple[int, int]:
        i1 = self.n if i1 is None else i1
        for v in (i0, i1):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise VectorFileError(
                    f"{self.path}: row bounds must be integers, got " f"{i0!r}, {i1!r}"
                )
        if not 0 <= i0 <= i1 <= self.n:
            raise VectorFileError(
                f"{self.path}: row range [{i0}, {i1}) is invalid; the file "
                f"has {self.n} rows, valid is 0 <= i0 <= i1 <= {self.n}"
            )
        return int(i0), int(i1)

    def _check_open(self) -> None:
        if self._file.closed:
            raise VectorFileError(f"{self.path}: vector file is closed")
        size = os.fstat(self._file.fileno()).st_size
        if size < self.layout.file_size:
            raise VectorFileError(
                f"{self.path}: file shrank from {self.layout.file_size} to "
                f"{size} bytes since it was opened"
            )

    def raw(self, i0: int = 0, i1: int | None = None) -> np.ndarray:
        """Rows ``[i0, i1)`` in the on-disk dtype, a read-only view of the memory map
        (no copy, no checks of values; *vecs row headers are not checked either)."""
        i0, i1 = self._range(i0, i1)
        self._check_open()
        if self._mm is None:
            return np.empty((0, self.d), dtype=self.dtype)
        return self._mm["vec"][i0:i1] if self.layout.row_header else self._mm[i0:i1]

    def read(
        self, i0: int = 0, i1: int | None = None, *, check_finite: bool = True, dtype=np.float32
    ) -> np.ndarray:
        """Rows ``[i0, i1)`` as a C-contiguous copy of ``dtype`` (float32 by default).

        ``check_finite``: raise on NaN/Inf in float data (after conversion, so a
        float64 value beyond float32 range counts), naming the first bad row.
        """
        i0, i1 = self._range(i0, i1)
        out_dtype = np.dtype(dtype)
        src = self.raw(i0, i1)
        if self.layout.row_header and len(src):
            self._check_dims(i0, self._mm["dim"][i0:i1])
        if out_dtype.kind in "iu" and self.dtype.kind == "f":
            raise VectorFileError(
                f"{self.path}: holds {self.dtype} values, cannot read them " f"as {out_dtype}"
            )
        out = np.empty(src.shape, dtype=out_dtype)
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf: caught below
            np.copyto(out, src, casting="unsafe")
        if check_finite and out_dtype.kind == "f":
            self._check_finite(out, i0)
        return out

    def read_ints(self, i0: int = 0, i1: int | None = None) -> np.ndarray:
        """Rows of an integer file (ground-truth ids) as int64, exactly."""
        if self.dtype.kind not in "iu":
            raise VectorFileError(
                f"{self.path}: holds {self.dtype} values, expected integers "
                "(e.g. an .ivecs ground-truth file)"
            )
        if self.dtype == np.uint64:
            raise VectorFileError(f"{self.path}: uint64 values may not fit in int64")
        return self.read(i0, i1, dtype=np.int64, check_finite=False)

    def _check_finite(self, block: np.ndarray, i0: int) -> None:
        # One vectorised column-sum pass (NaN and Inf propagate); only when it is not
        # finite (or overflowed) do we pay for locating the first bad row.
        if not len(block):
            return
        with np.errstate(over="ignore", invalid="ignore"):  # overflow only sends us below
            if np.isfinite(block.sum(axis=0)).all():
                return
        bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad_rows):
            r = int(bad_rows[0])
            c = int(np.flatnonzero(~np.isfinite(block[r]))[0])
            raise VectorFileError(
                f"{self.path}: row {i0 + r} has a non-finite value "
                f"({block[r, c]} in column {c}); NaN/Inf would poison "
                "distances and centroids"
            )

    def default_block_rows(self) -> int:
        return max(1, BLOCK_BYTES // (4 * self.d))

    def iter_blocks(
        self,
        i0: int = 0,
        i1: int | None = None,
        *,
        block_rows: int | None = None,
        check_finite: bool = True,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 block)`` covering ``[i0, i1)`` exactly once, in
        order, each block at most ``block_rows`` rows (default: ~64 MiB of float32)."""
        i0, i1 = self._range(i0, i1)
        if block_rows is None:
            block_rows = self.default_block_rows()
        if (
            isinstance(block_rows, bool)
            or not isinstance(block_rows, (int, np.integer))
            or block_rows <= 0
        ):
            raise VectorFileError(
                f"{self.path}: block_rows must be a positive integer, " f"got {block_rows!r}"
            )
        for start in range(i0, i1, int(block_rows)):
            yield start, self.read(
                start, min(i1, start + int(block_rows)), check_finite=check_finite
            )
