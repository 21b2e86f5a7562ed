"""Bad data as a user meets it, through the command-line scripts: truncated and
corrupt vector files, dimensions that do not match between stages, NaN/Inf rows,
empty inputs, k larger than n, slices of another trained index handed to the
merge, a shard missing (or corrupted) at search time.  Each is refused with a
non-zero exit and one ``error:`` line naming the file at fault (no traceback),
and leaves no output behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    NH,
    NV,
    SETTINGS,
    D,
    N,
    assert_nothing_half_written,
    run_stage,
    stage_command,
)

from distributed_ondisk.vectors import read_vectors, write_vectors

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def refused(argv: list[str], *needles: str, secret_file: Path | None = None) -> str:
    r = run_stage(argv, secret_file=secret_file)
    assert r.returncode != 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), r.stderr[-2000:]
    for n in needles:
        assert str(n) in last, f"{n!r} not in {last!r}"
    return last


@pytest.fixture(scope="module")
def x(reference) -> np.ndarray:
    return read_vectors(reference.root / "data.fvecs")


def vslice_cmd(reference, data: Path, out: Path, i0: int = 0, i1: int = 500) -> list[str]:
    return [
        "make_index_vslice.py",
        "--inputindex",
        str(reference.root / "trained.index"),
        "--input",
        str(data),
        "--i0",
        str(i0),
        "--i1",
        str(i1),
        "-o",
        str(out),
    ]


def kmeans_cmd(data: Path, k: str = SETTINGS["K"], out: Path | None = None) -> list[str]:
    return [
        "distributed_kmeans.py",
        "--indata",
        str(data),
        "--k",
        k,
        "--niter",
        "2",
        "--gpu",
        "-2",
        "--nt",
        "1",
        *(["--out", str(out)] if out else []),
    ]


# ------------------------------------------------------------------ vector files


def test_truncated_vector_file_is_named_by_every_reader(reference, tmp_path):
    bad = tmp_path / "truncated.fvecs"
    raw = (reference.root / "data.fvecs").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2 + 7])  # cut in the middle of a row
    out = tmp_path / "out"
    refused(vslice_cmd(reference, bad, out / "v.index"), bad, "truncated")
    refused(kmeans_cmd(bad, out=out / "c.npy"), bad, "truncated")
    refused(
        [
            "make_trained_index.py",
            "--centroids",
            str(reference.root / "centroids.npy"),
            "--indata",
            str(bad),
            "--out",
            str(out / "t.index"),
        ],
        bad,
    )
    refused(
        [
            "distributed_kmeans.py",
            "--server",
            "--indata",
            str(bad),
            "--port",
            "0",
            "--host",
            "127.0.0.1",
        ],
        bad,
        secret_file=reference.secret_file,
    )
    assert not out.exists() or list(out.iterdir()) == []


def test_corrupt_row_header_is_named_with_its_row(reference, tmp_path, x):
    bad = tmp_path / "corrupt.fvecs"
    raw = bytearray((reference.root / "data.fvecs").read_bytes())
    row = 1234
    raw[row * (4 + 4 * D) : row * (4 + 4 * D) + 4] = np.int32(D + 1).tobytes()
    bad.write_bytes(bytes(raw))
    last = refused(vslice_cmd(reference, bad, tmp_path / "v.index", 1000, 2000), bad)
    assert str(row) in last, last
    refused(kmeans_cmd(bad), bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_row_is_named_with_its_row(reference, tmp_path, x, value):
    bad = tmp_path / "nonfinite.fvecs"
    y = x[:3000].copy()
    y[2345, 3] = value
    write_vectors(bad, y)
    for argv in (
        vslice_cmd(reference, bad, tmp_path / "v.index", 0, 3000),
        kmeans_cmd(bad),
        [
            "make_trained_index.py",
            "--centroids",
            str(reference.root / "centroids.npy"),
            "--indata",
            str(bad),
            "--out",
            str(tmp_path / "t.index"),
        ],
    ):
        last = refused(argv, bad)
        assert "2345" in last, last
    assert not (tmp_path / "v.index").exists() and not (tmp_path / "t.index").exists()


def test_empty_inputs(reference, tmp_path):
    empty = tmp_path / "empty.fvecs"
    empty.write_bytes(b"")
    refused(vslice_cmd(reference, empty, tmp_path / "v.index"), empty)
    refused(kmeans_cmd(empty), empty)
    empty_npy = tmp_path / "empty.npy"
    np.save(empty_npy, np.zeros((0, D), dtype=np.float32))
    refused(kmeans_cmd(empty_npy), empty_npy)
    refused(vslice_cmd(reference, empty_npy, tmp_path / "v.index", 0, 1), empty_npy)
    refused(
        [
            "merge_to_ondisk.py",
            "--inputs",
            str(tmp_path / "nothing_here"),
            "--nslice",
            "1",
            "--slice_no",
            "0",
            "--output",
            str(tmp_path / "h.index"),
        ],
        "nothing_here",
    )


def test_k_larger_than_n(reference, tmp_path):
    data = reference.root / "data.fvecs"
    refused(kmeans_cmd(data, k=str(N + 100)), data, f"k={N + 100}", str(N))
    small = tmp_path / "small.fvecs"
    write_vectors(small, read_vectors(reference.root / "data.fvecs", 0, 20))
    refused(
        [
            "make_trained_index.py",
            "--centroids",
            str(reference.root / "centroids.npy"),
            "--indata",
            str(small),
            "--out",
            str(tmp_path / "t.index"),
        ],
        small,
    )


# ------------------------------------------------------------------ between stages


def test_mismatched_dimensions_between_stages(reference, tmp_path, x):
    other_d = tmp_path / "d8.fvecs"
    write_vectors(other_d, np.ascontiguousarray(x[:2000, :8]))
    refused(vslice_cmd(reference, other_d, tmp_path / "v.index"), other_d)
    refused(
        [
            "make_trained_index.py",
            "--centroids",
            str(reference.root / "centroids.npy"),
            "--indata",
            str(other_d),
            "--out",
            str(tmp_path / "t.index"),
        ],
        other_d,
    )
    c8 = tmp_path / "c8.npy"
    np.save(c8, np.load(reference.root / "centroids.npy")[:, :8])
    refused(
        [
            "make_trained_index.py",
            "--centroids",
            str(c8),
            "--indata",
            str(reference.root / "data.fvecs"),
            "--out",
            str(tmp_path / "t.index"),
        ],
        c8,
    )
    q8 = tmp_path / "q8.npy"
    np.save(q8, x[:10, :8])
    refused(
        [
            "combined_index.py",
            "--shards",
            str(reference.root / "hslices"),
            "--queries",
            str(q8),
            "--gt",
            str(reference.root / "queries.gt100.ivecs"),
            "--nprobe",
            "1",
        ],
        q8,
    )
    assert not (tmp_path / "v.index").exists() and not (tmp_path / "t.index").exists()


def test_slice_of_another_trained_index_handed_to_the_merge(reference, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    shutil.copy(reference.root / "centroids.npy", w / "centroids.npy")
    shutil.copy(reference.root / "data.fvecs", w / "data.fvecs")
    cmd = stage_command(w, "trained")
    cmd[cmd.index("--seed") + 1] = "4321"  # another random rotation
    r = run_stage(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    (w / "vslices").mkdir()
    r = run_stage(stage_command(w, "vslice", 2))
    assert r.returncode == 0, r.stderr[-2000:]
    foreign = w / f"vslices/vslice_0002_of_{NV:04d}.index"
    inputs = [str(reference.root / f"vslices/vslice_{i:04d}_of_{NV:04d}.index") for i in (0, 1)]
    out = tmp_path / "h" / "hslice.index"
    refused(
        [
            "merge_to_ondisk.py",
            "--inputs",
            *inputs,
            str(foreign),
            "--nslice",
            "2",
            "--slice_no",
            "0",
            "--output",
            str(out),
        ],
        foreign,
    )
    refused(
        [
            "merge_to_ondisk.py",
            "--inputs",
            *inputs,
            str(foreign),
            "--nslice",
            "2",
            "--slice_no",
            "0",
            "--output",
            str(out),
            "--trained",
            str(reference.root / "trained.index"),
        ],
        foreign,
    )
    assert not out.exists()


# ------------------------------------------------------------------ at search time


def test_missing_or_corrupt_shard_at_search_time(reference, tmp_path):
    h = tmp_path / "hslices"
    shutil.copytree(reference.root / "hslices", h)
    for f in ("trained.index", "trained.index.manifest.json"):
        shutil.copy(reference.root / f, tmp_path / f)
    gt = str(reference.root / "queries.gt100.ivecs")
    q = str(reference.root / "queries.npy")
    missing = h / f"hslice_0001_of_{NH:04d}.index"
    for p in h.glob(f"hslice_0001_of_{NH:04d}.*"):
        p.unlink()
    # the search server asked to serve a shard that is gone
    refused(
        ["search_server.py", "--shards", str(missing), "--port", "0"],
        missing,
        secret_file=reference.secret_file,
    )
    # the evaluation over a directory missing a shard: the uncovered lists are named
    refused(
        [
            "combined_index.py",
            "--shards",
            str(h),
            "--trained",
            str(tmp_path / "trained.index"),
            "--queries",
            q,
            "--gt",
            gt,
            "--nprobe",
            "1",
        ],
        "[16, 32)",
    )
    # a shard whose lists file was truncated: named when opened
    shutil.copytree(reference.root / "hslices", h, dirs_exist_ok=True)
    lists = h / f"hslice_0001_of_{NH:04d}.invlists"
    lists.write_bytes(lists.read_bytes()[:1000])
    refused(
        [
            "search_server.py",
            "--shards",
            str(h),
            "--port",
            "0",
            "--trained",
            str(tmp_path / "trained.index"),
        ],
        lists.name,
        secret_file=reference.secret_file,
    )
    # a bit flipped in a shard's lists: caught by --checksums, naming the file
    shutil.copytree(reference.root / "hslices", h, dirs_exist_ok=True)
    data = bytearray(lists.read_bytes())
    data[5000] ^= 0x40
    lists.write_bytes(bytes(data))
    refused(
        [
            "search_server.py",
            "--shards",
            str(h),
            "--port",
            "0",
            "--checksums",
            "--trained",
            str(tmp_path / "trained.index"),
        ],
        lists.name,
        secret_file=reference.secret_file,
    )
    assert_nothing_half_written(reference.root)
