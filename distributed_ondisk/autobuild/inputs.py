"""Embedding files as autofaiss users give them: ``.npy`` matrices or parquet tables,
one or several files or folders, on any filesystem fsspec knows (local paths,
``file://``, ``hdfs://``, ``s3://``...).

Three steps, each cheap before the next is paid for:

* :func:`list_embedding_files` -- names only; an empty folder is an error;
* :func:`probe_files` -- headers / footers only (npy header, parquet metadata and
  one row): rows and dimension of every file, mixed dimensions and missing
  columns refused naming the files, before any vector is read;
* :func:`read_rows` -- rows ``[a, b)`` of one file as float32, NaN/Inf and
  wrong-length rows refused naming the file and the row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distributed_ondisk.errors import InputError, VectorFileError
from distributed_ondisk.vectors.formats import read_npy_header

log = logging.getLogger(__name__)
FORMATS = ("npy", "parquet")


@dataclass(frozen=True)
class InputFile:
    """One embedding file: its URL (openable by fsspec anywhere), rows, dimension."""

    url: str
    rows: int
    d: int
    file_format: str
    column: str | None = None  # parquet embedding column
    npy_offset: int = 0  # npy: byte offset of the data
    npy_dtype: str = ""  # npy: on-disk dtype


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise InputError(f"{url}: no filesystem for this URL ({e})") from e


def check_format(file_format: str) -> str:
    if file_format not in FORMATS:
        raise InputError(f"file_format {file_format!r}: expected one of {', '.join(FORMATS)}")
    return file_format


def list_embedding_files(embeddings: str | Sequence[str], file_format: str) -> list[str]:
    """Sorted URLs of the ``.<file_format>`` files of the given files and folders.

    A folder contributes its files with that suffix (not recursively, in
    lexicographic order, as autofaiss reads them); a named file must exist.
    """
    check_format(file_format)
    specs = [embeddings] if isinstance(embeddings, str) else list(embeddings)
    if not specs:
        raise InputError("no embeddings given")
    out: list[str] = []
    for spec in specs:
        fs, path = _fs(str(spec))
        if fs.isdir(path):
            names = sorted(
                p
                for p in fs.ls(path, detail=False)
                if p.endswith("." + file_format) and fs.isfile(p)
            )
            if not names:
                raise InputError(f"{spec}: folder holds no .{file_format} file")
        elif fs.isfile(path):
            names = [path]
        else:
            raise InputError(f"{spec}: no such file or folder")
        out += [fs.unstrip_protocol(p) for p in names]
    if len(set(out)) != len(out):
        dup = next(u for u in out if out.count(u) > 1)
        raise InputError(f"{dup} is given twice")
    return out


def _probe_npy(url: str) -> InputFile:
    """The header by the project's one ``.npy`` parser, then what :func:`read_rows` needs:
    floating-point rows stored one after the other (C order)."""
    fs, path = _fs(url)
    size = fs.size(path)
    with fs.open(path, "rb") as f:
        h = read_npy_header(f, size, url)
    if h.dtype.kind != "f" or h.fortran:
        raise VectorFileError(
            f"{url}: need a 2-d C-order floating-point matrix, got shape "
            f"({h.n}, {h.d}) {h.dtype}{' Fortran order' if h.fortran else ''}"
        )
    return InputFile(url, h.n, h.d, "npy", npy_offset=h.offset, npy_dtype=h.dtype.str)


def _parquet(url: str) -> Any:
    import pyarrow.parquet as pq

    fs, path = _fs(url)
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise VectorFileError(f"{url}: not a readable parquet file ({e})") from e


def _probe_parquet(url: str, column: str, id_columns: Sequence[str]) -> InputFile:
    pf = _parquet(url)
    names = pf.schema_arrow.names
    for c in [column, *id_columns]:
        if c not in names:
            raise InputError(f"{url}: no column {c!r} (columns: {', '.join(names)})")
    rows = int(pf.metadata.num_rows)
    d = 0
    if rows:
        batch = next(pf.iter_batches(batch_size=1, columns=[column]))
        first = batch.column(0).to_pylist()[0]
        if first is None or not hasattr(first, "__len__"):
            raise InputError(f"{url}: column {column!r} must hold one list of floats per row")
        d = len(first)
    return InputFile(url, rows, d, "parquet", column=column)


def probe_files(
    urls: Sequence[str],
    file_format: str,
    embedding_column_name: str = "embeddings",
    id_columns: Sequence[str] | None = None,
) -> list[InputFile]:
    """Rows and dimension of every file from its header; all files must agree on d."""
    check_format(file_format)
    if id_columns and file_format != "parquet":
        raise InputError("id_columns need file_format='parquet' (npy files have no columns)")
    files = [
        (
            _probe_npy(u)
            if file_format == "npy"
            else _probe_parquet(u, embedding_column_name, id_columns or ())
        )
        for u in urls
    ]
    nonempty = [f for f in files if f.rows]
    if not nonempty:
        raise InputError(f"the {len(files)} embedding file(s) hold no rows")
    ref = nonempty[0]
    for f in nonempty:
        if f.d != ref.d:
            raise InputError(
                f"embedding files differ in dimension: {ref.url} has d={ref.d}, "
                f"{f.url} has d={f.d}"
            )
    if ref.d < 1:
        raise InputError(f"{ref.url}: embeddings have dimension 0")
    return files


def _check_rows(x: np.ndarray, f: InputFile, a: int) -> np.ndarray:
    if x.size and not (np.isfinite(x.min()) and np.isfinite(x.max())):
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InputError(f"{f.url}: row {a + bad} contains NaN or Inf")
    return x


def _parquet_column_rows(f: InputFile, a: int, b: int, columns: list[str]) -> Any:
    """pyarrow Table of rows [a, b) of these columns, reading only overlapping row groups."""
    import pyarrow as pa

    pf = _parquet(f.url)
    tables, pos = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(a, pos), min(b, pos + n)
        if lo < hi:
            tables.append(pf.read_row_group(g, columns=columns).slice(lo - pos, hi - lo))
        pos += n
    return pa.concat_tables(tables) if tables else pf.schema_arrow.empty_table().select(columns)


def read_rows(f: InputFile, a: int, b: int) -> np.ndarray:
    """float32 C-contiguous rows ``[a, b)`` of one file, validated."""
    if not 0 <= a <= b <= f.rows:
        raise InputError(f"{f.url}: rows [{a}, {b}) outside [0, {f.rows})")
    if f.file_format == "npy":
        dt = np.dtype(f.npy_dtype)
        fs, path = _fs(f.url)
        with fs.open(path, "rb") as fh:
            fh.seek(f.npy_offset + a * f.d * dt.itemsize)
            buf = fh.read((b - a) * f.d * dt.itemsize)
        if len(buf) != (b - a) * f.d * dt.itemsize:
            raise VectorFileError(f"{f.url}: short read at rows [{a}, {b}) (file changed?)")
        x = np.frombuffer(buf, dtype=dt).reshape(b - a, f.d)
        return _check_rows(np.ascontiguousarray(x, dtype=np.float32), f, a)
    import pyarrow.compute as pc

    col = _parquet_column_rows(f, a, b, [f.column]).column(0).combine_chunks()
    if col.null_count:
        bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{f.url}: row {a + bad} has no embedding (null)")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != f.d).any():
        bad = int(np.flatnonzero(lengths != f.d)[0])
        raise InputError(
            f"{f.url}: row {a + bad} has {int(lengths[bad])} components, " f"expected d={f.d}"
        )
    values = col.flatten().to_numpy(zero_copy_only=False)
    x = np.ascontiguousarray(values.reshape(b - a, f.d), dtype=np.float32)
    return _check_rows(x, f, a)


def read_id_columns(f: InputFile, a: int, b: int, id_columns: Sequence[str]) -> Any:
    """pyarrow Table of the id columns for rows ``[a, b)`` of a parquet file."""
    return _parquet_column_rows(f, a, b, list(id_columns))
