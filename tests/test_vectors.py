"""Vector file I/O: round trips of every format, row ranges, blocks, and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import VectorFileError
from distributed_ondisk.vectors import (
    FORMATS,
    VectorWriter,
    open_vectors,
    read_ints,
    read_vectors,
    write_vectors,
)
from distributed_ondisk.vectors import formats as formats_mod
from distributed_ondisk.vectors import writer as writer_mod

FLOAT_EXTS = ["fvecs", "fbin", "npy"]
INT_EXTS = {
    "ivecs": np.int32,
    "ibin": np.int32,
    "bvecs": np.uint8,
    "u8bin": np.uint8,
    "i8bin": np.int8,
}


def only_outputs(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def write_raw(path: Path, *parts) -> Path:
    path.write_bytes(b"".join(np.asarray(p).tobytes() for p in parts))
    return path


def fvecs_bytes(x: np.ndarray, dims=None) -> bytes:
    rec = np.empty(len(x), dtype=[("dim", "<i4"), ("vec", "<f4", (x.shape[1],))])
    rec["dim"] = x.shape[1] if dims is None else dims
    rec["vec"] = x
    return rec.tobytes()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", FLOAT_EXTS)
@pytest.mark.parametrize("src", [np.float32, np.float64, np.int64])
def test_float_formats_round_trip(tmp_path, ext, src):
    x = make_clustered(300, 12, seed=1).astype(src)
    p = tmp_path / f"x.{ext}"
    write_vectors(p, x)
    assert only_outputs(tmp_path) == [p.name]  # no temporaries left behind
    vf = open_vectors(p)
    assert (vf.n, vf.d, len(vf), vf.format) == (300, 12, 300, ext)
    y = vf.read()
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x.astype(np.float32))
    if ext == "npy":
        assert vf.dtype == src and np.load(p).dtype == src  # npy keeps the dtype
        np.testing.assert_array_equal(np.load(p), x)


@pytest.mark.parametrize("ext,disk", list(INT_EXTS.items()))
def test_int_formats_round_trip_exact(tmp_path, ext, disk):
    x = make_clustered(200, 9, seed=2, dtype=np.uint8 if disk == np.uint8 else np.int8)
    x = x.astype(np.int64)
    p = tmp_path / f"ids.{ext}"
    write_vectors(p, x)
    vf = open_vectors(p)
    assert vf.dtype == disk and vf.raw().dtype == disk
    np.testing.assert_array_equal(vf.raw(), x)
    np.testing.assert_array_equal(read_ints(p), x)
    np.testing.assert_array_equal(read_vectors(p), x.astype(np.float32))


def test_ground_truth_ids_beyond_float32_precision(tmp_path):
    ids = np.array([[2**24 + 1, 2**31 - 1, 0]], dtype=np.int64)
    write_vectors(tmp_path / "gt.ivecs", ids)
    got = read_ints(tmp_path / "gt.ivecs")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ids)


@pytest.mark.parametrize(
    "dtype", ["<f2", "<f4", "<f8", ">f4", "i1", "u1", "<i2", "<u2", "<i4", "<i8"]
)
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_written_by_numpy_any_dtype_and_order(tmp_path, dtype, order):
    x = np.asarray(make_clustered(257, 6, seed=3) * 4, dtype=dtype, order=order)
    p = tmp_path / "x.npy"
    np.save(p, x)
    vf = open_vectors(p)
    assert vf.layout.fortran == (order == "F")
    for i0, i1 in [(0, 257), (0, 1), (256, 257), (100, 100), (17, 200), (257, 257)]:
        got = vf.read(i0, i1)
        assert got.flags.c_contiguous and got.dtype == np.float32
        np.testing.assert_array_equal(got, x[i0:i1].astype(np.float32))
        np.testing.assert_array_equal(vf.raw(i0, i1), x[i0:i1])
    blocks = list(vf.iter_blocks(5, 250, block_rows=64))
    np.testing.assert_array_equal(
        np.concatenate([b for _, b in blocks]), x[5:250].astype(np.float32)
    )


def test_bin_with_dtype_hint(tmp_path):
    x = make_clustered(40, 3, dtype=np.int8)
    write_vectors(tmp_path / "x.bin", x)
    vf = open_vectors(tmp_path / "x.bin", dtype_hint=np.int8)
    np.testing.assert_array_equal(vf.raw(), x)
    with pytest.raises(VectorFileError, match=r"x\.bin: a \.bin file needs dtype_hint"):
        open_vectors(tmp_path / "x.bin")


def test_zero_rows_where_d_is_in_a_header(tmp_path):
    for ext in ("npy", "fbin", "u8bin"):
        p = tmp_path / f"e.{ext}"
        write_vectors(p, np.zeros((0, 5), dtype=np.uint8))
        vf = open_vectors(p)
        assert (vf.n, vf.d) == (0, 5)
        assert vf.read().shape == (0, 5) and vf.raw().shape == (0, 5)
        assert list(vf.iter_blocks()) == []


# ---------------------------------------------------------------- ranges and blocks


@pytest.mark.parametrize("ext", ["fvecs", "bvecs", "fbin", "npy"])
def test_row_ranges_and_blocks_cover_exactly_once(tmp_path, ext):
    x = make_clustered(1000, 5, seed=4, dtype=np.uint8)
    p = tmp_path / f"x.{ext}"
    write_vectors(p, x)
    vf = open_vectors(p)
    for i0, i1 in [(0, 0), (1000, 1000), (999, 1000), (0, 1), (0, None), (123, 877)]:
        np.testing.assert_array_equal(vf.read(i0, i1), x[i0:i1].astype(np.float32))
    for block_rows in (1, 7, 333, 1000, 5000):
        starts, total = [], []
        for start, b in vf.iter_blocks(3, 998, block_rows=block_rows):
            assert 0 < len(b) <= block_rows and b.dtype == np.float32
            starts.append(start)
            total.append(b)
        assert starts == list(range(3, 998, block_rows))
        np.testing.assert_array_equal(np.concatenate(total), x[3:998].astype(np.float32))


def test_default_block_is_bounded(tmp_path, monkeypatch):
    from distributed_ondisk.vectors import reader

    monkeypatch.setattr(reader, "BLOCK_BYTES", 4 * 8 * 100)  # 100 rows of d=8
    x = make_clustered(1050, 8)
    write_vectors(tmp_path / "x.fvecs", x)
    sizes = [len(b) for _, b in open_vectors(tmp_path / "x.fvecs").iter_blocks()]
    assert sizes == [100] * 10 + [50]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 60), d=st.integers(1, 20), ext=st.sampled_from(sorted(FORMATS)), data=st.data()
)
def test_property_round_trip_any_range(tmp_path, n, d, ext, data):
    dtype = {
        "fvecs": np.float32,
        "fbin": np.float32,
        "npy": np.float32,
        "bin": np.float32,
        "ivecs": np.int32,
        "ibin": np.int32,
        "i8bin": np.int8,
    }.get(ext, np.uint8)
    x = make_clustered(n, d, n_clusters=3, seed=n * 100 + d, dtype=dtype)
    if data.draw(st.booleans(), "fortran") and ext == "npy":
        x = np.asfortranarray(x)
    p = tmp_path / f"p{n}_{d}.{ext}"
    write_vectors(p, x)
    i0 = data.draw(st.integers(0, n), "i0")
    i1 = data.draw(st.integers(i0, n), "i1")
    vf = open_vectors(p, dtype_hint=dtype if ext == "bin" else None)
    np.testing.assert_array_equal(vf.read(i0, i1), x[i0:i1].astype(np.float32))
    block_rows = data.draw(st.integers(1, n + 2), "block_rows")
    got = [b for _, b in vf.iter_blocks(i0, i1, block_rows=block_rows)]
    np.testing.assert_array_equal(
        np.concatenate(got) if got else np.empty((0, d), np.float32), x[i0:i1].astype(np.float32)
    )
    vf.close()
    p.unlink()


# ---------------------------------------------------------------- refusals on open


def test_missing_file(tmp_path):
    with pytest.raises(VectorFileError, match=r"nope\.fvecs: vector file not found"):
        open_vectors(tmp_path / "nope.fvecs")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(VectorFileError, match=r"x\.csv: unknown .*'\.csv'.*supported: \.fvecs"):
        open_vectors(tmp_path / "x.csv")


def test_directory_is_not_a_vector_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(VectorFileError, match=r"d\.npy: not a regular file"):
        open_vectors(tmp_path / "d.npy")


def test_empty_vecs_file(tmp_path):
    (tmp_path / "e.fvecs").write_bytes(b"")
    with pytest.raises(VectorFileError, match=r"e\.fvecs: empty file.*cannot hold zero rows"):
        open_vectors(tmp_path / "e.fvecs")


def test_truncated_vecs_names_the_row(tmp_path):
    x = make_clustered(10, 4)
    p = tmp_path / "t.fvecs"
    p.write_bytes(fvecs_bytes(x)[:-3])
    with pytest.raises(
        VectorFileError,
        match=r"t\.fvecs: truncated.*197 bytes is not a multiple "
        r"of the row size 20.*row 9 has 17 of 20 bytes "
        r"\(expected 200 bytes",
    ):
        open_vectors(p)
    write_raw(tmp_path / "s.ivecs", np.array([1], dtype=np.int16))
    with pytest.raises(VectorFileError, match=r"s\.ivecs: truncated: 2 bytes"):
        open_vectors(tmp_path / "s.ivecs")


@pytest.mark.parametrize("d,ext", [(0, "fvecs"), (-3, "bvecs"), (1 << 24, "ivecs")])
def test_bad_dimension_in_vecs_header(tmp_path, d, ext):
    p = write_raw(tmp_path / f"b.{ext}", np.array([d, 0, 0, 0], dtype="<i4"))
    with pytest.raises(
        VectorFileError, match=rf"b\.{ext}: row 0 declares dimension {d}, " r"outside 1\.\.1048576"
    ):
        open_vectors(p)


def test_inconsistent_dims_caught_at_open_at_last_row(tmp_path):
    x = make_clustered(50, 4)
    dims = np.full(50, 4)
    dims[49] = 7
    p = tmp_path / "c.fvecs"
    p.write_bytes(fvecs_bytes(x, dims))
    with pytest.raises(
        VectorFileError, match=r"c\.fvecs: row 49 declares dimension 7, but " r"row 0 declares 4"
    ):
        open_vectors(p)


def test_inconsistent_dims_between_samples_caught_on_read(tmp_path):
    n = 5000
    sampled = set(np.linspace(0, n - 1, formats_mod.OPEN_HEADER_SAMPLES + 1).astype(int))
    bad = next(r for r in range(2000, n) if r not in sampled)
    dims = np.full(n, 4)
    dims[bad] = 5
    dims[bad + 600] = 6
    p = tmp_path / "c.fvecs"
    p.write_bytes(fvecs_bytes(make_clustered(n, 4), dims))
    vf = open_vectors(p)  # the sample misses it
    vf.read(0, bad)  # rows before it are fine
    with pytest.raises(VectorFileError, match=rf"c\.fvecs: row {bad} declares dimension 5"):
        for _ in vf.iter_blocks(block_rows=1000):
            pass


def test_bin_header_inconsistent_with_size(tmp_path):
    p = write_raw(
        tmp_path / "h.fbin", np.array([10, 4], dtype="<u4"), np.zeros((9, 4), dtype="<f4")
    )
    with pytest.raises(
        VectorFileError,
        match=r"h\.fbin: truncated: header says n=10, d=4 "
        r"\(float32\) so "
        r"the file should have 168 bytes, but it has 152",
    ):
        open_vectors(p)
    write_raw(tmp_path / "z.u8bin", np.array([3], dtype="<u4"))
    with pytest.raises(
        VectorFileError, match=r"z\.u8bin: truncated: 4 bytes, shorter than the " r"8-byte header"
    ):
        open_vectors(tmp_path / "z.u8bin")
    write_raw(tmp_path / "d0.fbin", np.array([0, 0], dtype="<u4"))
    with pytest.raises(VectorFileError, match=r"d0\.fbin: header declares dimension 0"):
        open_vectors(tmp_path / "d0.fbin")


@pytest.mark.parametrize(
    "arr,problem",
    [
        (np.zeros((3, 2), dtype=np.complex64), "unsupported .npy dtype complex64"),
        (np.zeros((3, 2), dtype=bool), "unsupported .npy dtype bool"),
        (np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]), "unsupported .npy dtype"),
        (np.zeros(5, dtype=np.float32), r".npy array has shape \(5,\); expected 2-D"),
        (np.zeros((2, 3, 4), dtype=np.float32), r".npy array has shape \(2, 3, 4\); expected 2-D"),
        (np.zeros((4, 0), dtype=np.float32), "header declares dimension 0"),
    ],
)
def test_npy_unsupported(tmp_path, arr, problem):
    np.save(tmp_path / "u.npy", arr)
    with pytest.raises(VectorFileError, match=r"u\.npy: " + problem):
        open_vectors(tmp_path / "u.npy")


def test_npy_object_and_garbage_and_truncated(tmp_path):
    np.save(tmp_path / "o.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(VectorFileError, match=r"o\.npy: unsupported \.npy dtype object"):
        open_vectors(tmp_path / "o.npy")
    (tmp_path / "g.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(VectorFileError, match=r"g\.npy: not a valid \.npy file"):
        open_vectors(tmp_path / "g.npy")
    np.save(tmp_path / "t.npy", np.zeros((10, 4), dtype=np.float32))
    with open(tmp_path / "t.npy", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "t.npy") - 1)
    with pytest.raises(
        VectorFileError,
        match=r"t\.npy: truncated: .npy header says shape "
        r"\(10, 4\) of "
        r"float32 so the file should have 288 bytes, "
        r"but it has 287",
    ):
        open_vectors(tmp_path / "t.npy")


def test_trailing_bytes(tmp_path):
    p = tmp_path / "x.fbin"
    write_vectors(p, np.ones((3, 2)))
    with open(p, "ab") as f:
        f.write(b"\0")
    with pytest.raises(
        VectorFileError,
        match=r"x\.fbin: trailing bytes: header says n=3, d=2 "
        r"\(float32\) so the file should have 32 bytes, "
        r"but it has 33",
    ):
        open_vectors(p)


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_vectors(tmp_path / "p.fvecs", np.ones((2, 2)))
    finally:
        os.umask(old)
    assert (tmp_path / "p.fvecs").stat().st_mode & 0o777 == 0o640


def test_dtype_hint_mismatch(tmp_path):
    write_vectors(tmp_path / "x.fvecs", np.ones((2, 2)))
    with pytest.raises(VectorFileError, match=r"x\.fvecs: holds float32 values, expected int32"):
        open_vectors(tmp_path / "x.fvecs", dtype_hint=np.int32)
    with pytest.raises(
        VectorFileError, match=r"x\.fvecs: holds float32 values, expected " r"integers"
    ):
        read_ints(tmp_path / "x.fvecs")


# ---------------------------------------------------------------- refusals on read


@pytest.mark.parametrize("i0,i1", [(-1, 3), (0, 11), (5, 4), (11, None), (1.5, 3), (True, 2)])
def test_bad_row_range(tmp_path, i0, i1):
    write_vectors(tmp_path / "r.fbin", make_clustered(10, 3))
    vf = open_vectors(tmp_path / "r.fbin")
    with pytest.raises(VectorFileError, match=r"r\.fbin: row (range|bounds)"):
        vf.read(i0, i1)
    with pytest.raises(VectorFileError, match=r"r\.fbin: row (range|bounds)"):
        next(vf.iter_blocks(i0, i1))


def test_bad_row_range_message_says_valid_range(tmp_path):
    write_vectors(tmp_path / "r.fbin", make_clustered(10, 3))
    with pytest.raises(
        VectorFileError,
        match=r"r\.fbin: row range \[5, 4\) is invalid; the file "
        r"has 10 rows, valid is 0 <= i0 <= i1 <= 10",
    ):
        read_vectors(tmp_path / "r.fbin", 5, 4)
    with pytest.raises(VectorFileError, match=r"block_rows must be a positive integer, got 0"):
        next(open_vectors(tmp_path / "r.fbin").iter_blocks(block_rows=0))


@pytest.mark.parametrize("ext", ["fvecs", "fbin", "npy"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_first_bad_row_named(tmp_path, ext, bad):
    x = make_clustered(500, 6)
    x[321, 2] = bad
    x[400, 0] = np.nan
    p = tmp_path / f"n.{ext}"
    write_vectors(p, x)  # writing is the user's choice
    vf = open_vectors(p)
    np.testing.assert_array_equal(vf.read(0, 321), x[:321])
    with pytest.raises(
        VectorFileError,
        match=rf"n\.{ext}: row 321 has a non-finite value " rf"\({bad} in column 2\)",
    ):
        for _ in vf.iter_blocks(block_rows=100):
            pass
    got = vf.read(300, 330, check_finite=False)
    assert np.isnan(got[21, 2]) if np.isnan(bad) else got[21, 2] == bad


def test_float64_beyond_float32_range_is_non_finite(tmp_path):
    x = np.ones((4, 3))
    x[2, 1] = 1e300
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(VectorFileError, match=r"big\.npy: row 2 has a non-finite value \(inf"):
        read_vectors(tmp_path / "big.npy")


def test_large_finite_values_are_not_flagged(tmp_path):
    x = np.full((8, 2), 3e38, dtype=np.float32)  # the column sums overflow
    write_vectors(tmp_path / "l.fbin", x)
    np.testing.assert_array_equal(read_vectors(tmp_path / "l.fbin"), x)


def test_file_shrinking_after_open_is_an_error_not_a_crash(tmp_path):
    p = tmp_path / "s.fbin"
    write_vectors(p, make_clustered(100, 4))
    vf = open_vectors(p)
    with open(p, "r+b") as f:
        f.truncate(100)
    with pytest.raises(VectorFileError, match=r"s\.fbin: file shrank from 1608 to 100 bytes"):
        vf.read(90, 100)
    vf.close()
    with pytest.raises(VectorFileError, match=r"s\.fbin: vector file is closed"):
        vf.read()


# ---------------------------------------------------------------- writes


def test_write_refusals_leave_nothing(tmp_path):
    cases = [
        ("a.fvecs", np.zeros(5), r"expected a 2-D array \(n, d\) to write, got shape \(5,\)"),
        ("a.fvecs", [[1.0, 2.0], [3.0]], "cannot convert the data to an array"),
        ("a.fvecs", np.zeros((0, 4)), r"cannot write zero rows to \.fvecs"),
        ("a.fvecs", np.zeros((3, 0)), "cannot write vectors of dimension 0"),
        ("a.ivecs", np.ones((2, 2)), r"\.ivecs stores int32; refusing to truncate float64"),
        ("a.bvecs", np.array([[1, 256]]), r"values span \[1, 256\], outside the uint8 range"),
        (
            "a.i8bin",
            np.array([[-129, 0]]),
            r"values span \[-129, 0\], outside the int8 range \[-128, 127\]",
        ),
        ("a.npy", np.zeros((2, 2), dtype=np.complex64), "cannot write complex64 values"),
        ("a.npy", np.array([[1, "x"]], dtype=object), "cannot write object values"),
        ("a.bin", np.zeros((2, 2), dtype=np.float64), r"cannot write float64 values to \.bin"),
        ("a.txt", np.zeros((2, 2)), r"unknown vector file extension '\.txt'"),
    ]
    for name, arr, problem in cases:
        with pytest.raises(VectorFileError, match=rf"{name.replace('.', '[.]')}: {problem}"):
            write_vectors(tmp_path / name, arr)
        assert only_outputs(tmp_path) == [], name


def test_failure_mid_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "x.fvecs"
    old = make_clustered(20, 4, seed=9)
    write_vectors(p, old)
    before = p.read_bytes()
    monkeypatch.setattr(writer_mod, "WRITE_CHUNK_BYTES", 4 * 8 * 10)  # several chunks
    with pytest.raises(RuntimeError, match="disk on fire"), VectorWriter(p, 4) as w:
        w.append(make_clustered(100, 4))
        assert w.n == 100
        raise RuntimeError("disk on fire")
    assert p.read_bytes() == before and only_outputs(tmp_path) == ["x.fvecs"]
    with pytest.raises(
        VectorFileError, match=r"expected a 2-D array of shape \(n, 4\), got " r"shape \(3, 5\)"
    ), VectorWriter(tmp_path / "y.npy", 4) as w:
        w.append(np.ones((3, 4)))
        w.append(np.ones((3, 5)))
    assert only_outputs(tmp_path) == ["x.fvecs"]


def test_write_vectors_failing_after_some_chunks(tmp_path, monkeypatch):
    p = tmp_path / "x.fbin"
    write_vectors(p, np.ones((4, 4)))
    before = p.read_bytes()
    monkeypatch.setattr(writer_mod, "WRITE_CHUNK_BYTES", 4 * 4 * 10)
    real, calls = np.ascontiguousarray, []

    def failing(*a, **kw):  # the disk fills up on the third chunk
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(np, "ascontiguousarray", failing)
    with pytest.raises(OSError, match="No space left"):
        write_vectors(p, make_clustered(100, 4))
    monkeypatch.undo()
    assert len(calls) == 3
    assert p.read_bytes() == before and only_outputs(tmp_path) == ["x.fbin"]


def test_streaming_writer_matches_whole_array(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "WRITE_CHUNK_BYTES", 100)
    x = make_clustered(1000, 7, seed=5)
    for ext in ("fvecs", "fbin", "npy"):
        with VectorWriter(tmp_path / f"s.{ext}", 7) as w:
            for a in range(0, 1000, 333):
                w.append(x[a : a + 333])
        write_vectors(tmp_path / f"w.{ext}", x)
        assert (tmp_path / f"s.{ext}").read_bytes() == (tmp_path / f"w.{ext}").read_bytes()
        np.testing.assert_array_equal(read_vectors(tmp_path / f"s.{ext}"), x)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), x)


def test_fortran_array_written_row_major(tmp_path):
    x = np.asfortranarray(make_clustered(50, 6).astype(np.float64))
    write_vectors(tmp_path / "f.npy", x)
    assert not open_vectors(tmp_path / "f.npy").layout.fortran
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), x)
