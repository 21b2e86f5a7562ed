"""build_index without Spark: pure planning, index key choice, input refusals, and a
local build over npy and parquet inputs searched through CombinedIndex."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from distributed_ondisk.autobuild import build_index, open_index
from distributed_ondisk.autobuild.index_key import choose_index_key, parse_index_key, parse_memory
from distributed_ondisk.autobuild.inputs import list_embedding_files, probe_files, read_rows
from distributed_ondisk.autobuild.plan import (
    holdout_rows,
    plan_pieces,
    rows_by_piece,
    training_blocks,
)
from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import InputError


def write_npy_parts(folder, x, cuts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        np.save(folder / f"part{i:02d}.npy", x[a:b])


def write_parquet_parts(folder, x, cuts, column="embeddings"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[a:b].ravel()), x.shape[1])
        table = pa.table({column: emb, "key": [f"k{j}" for j in range(a, b)], "n": np.arange(a, b)})
        pq.write_table(table, folder / f"part{i:02d}.parquet", row_group_size=700)


# ---- pure planning ---------------------------------------------------------------


def test_plan_pieces_tile_files_in_order():
    pieces = plan_pieces([10, 0, 7], 4)
    assert [(p.file_no, p.a, p.b, p.start) for p in pieces] == [
        (0, 0, 3, 0),
        (0, 3, 6, 3),
        (0, 6, 10, 6),
        (2, 0, 3, 10),
        (2, 3, 7, 13),
    ]
    assert [p.piece_no for p in pieces] == list(range(5))


def test_plan_pieces_limit_leaves_holdout_out():
    pieces = plan_pieces([10, 10], 100, limit=15)
    assert [(p.file_no, p.a, p.b) for p in pieces] == [(0, 0, 10), (1, 0, 5)]
    with pytest.raises(InputError):
        plan_pieces([10], 0)


def test_holdout_and_rows_by_piece():
    assert holdout_rows(1000, 50) == (950, 1000)
    assert holdout_rows(100, 50) == (90, 100)  # at most 10 % held out
    pieces = plan_pieces([5, 5], 3)  # [0,2) [2,5) | [5,7) [7,10)
    got = rows_by_piece(np.array([1, 2, 6, 9]), pieces)
    assert [(i, r.tolist()) for i, r in got] == [
        (0, [1]),
        (1, [2]),
        (2, [1]),
        (3, [4]),
    ]  # file rows
    with pytest.raises(InputError):
        rows_by_piece(np.array([3, 2]), pieces)


def test_training_blocks_cover_rows():
    assert training_blocks(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert training_blocks(2, 8) == [(0, 1), (1, 2)]


# ---- index key ----------------------------------------------------------------------


def test_index_key_chosen_from_budget_with_reasons():
    spec, why = choose_index_key(1_000_000, 96, parse_memory("250M"))
    assert spec.key(96) == "RR96,IVF4096_HNSW32,SQfp16" and "chosen" in why[-1]
    spec, why = choose_index_key(1_000_000, 96, parse_memory("150M"))
    assert spec.key(96) == "RR96,IVF4096_HNSW32,SQ8" and "chosen" in why[-1]
    spec, why = choose_index_key(1_000_000, 96, parse_memory("60M"))
    assert spec.cfg.encoder == "SQ4"  # 48+8 bytes/vector fits, 72+8 does not
    with pytest.raises(InputError, match="no index fits"):
        choose_index_key(1_000_000, 96, parse_memory("1M"))


def test_kmeans_placement_driver_when_the_sample_fits():
    from distributed_ondisk.autobuild.placement import kmeans_placement

    need, on_driver = kmeans_placement(65536, 64, 256, 1 << 30, 2, local=False)
    assert on_driver and need == 65536 * (256 + 28) + 4 * 4096 * 256
    need, on_driver = kmeans_placement(65536, 64, 256, 30 << 20, 2, local=False)
    assert not on_driver and need == 32768 * (256 + 28) + 4 * 4096 * 256
    with pytest.raises(InputError, match="per worker, over half of current_memory"):
        kmeans_placement(65536, 64, 256, 10 << 20, 2, local=False)
    with pytest.raises(InputError, match="on the driver, over half of current_memory"):
        kmeans_placement(65536, 64, 256, 30 << 20, 2, local=True)


def test_index_key_given_is_parsed_and_checked():
    spec, _ = choose_index_key(10000, 32, 1 << 30, "IVF64_HNSW32,SQ6")
    assert (spec.nlist, spec.cfg.encoder, spec.cfg.rotation) == (64, "SQ6", "none")
    assert parse_index_key("RR32,IVF128_HNSW16,PQ8", 32).cfg.hnsw_m == 16
    for bad in ("IVF64,Flat", "HNSW32", "RR16,IVF64_HNSW32,SQ8", "IVF64_HNSW32,PQ5"):
        with pytest.raises(InputError):
            parse_index_key(bad, 32)
    with pytest.raises(InputError, match="over max_index_memory_usage"):
        choose_index_key(10000, 32, 1000, "IVF64_HNSW32,SQ8")
    assert parse_memory("1.5G") == 3 << 29 and parse_memory("16GB") == 16 << 30


# ---- inputs and refusals (before any long work) ----------------------------------------


def test_parquet_inputs_read_back(tmp_path):
    x = make_clustered(2000, 8, seed=3)
    write_parquet_parts(tmp_path / "pq", x, [0, 1200, 2000])
    files = probe_files(
        list_embedding_files(str(tmp_path / "pq"), "parquet"), "parquet", "embeddings", ["key"]
    )
    assert [(f.rows, f.d) for f in files] == [(1200, 8), (800, 8)]
    np.testing.assert_array_equal(read_rows(files[0], 650, 1100), x[650:1100])


def test_npy_headers_by_the_vectors_parser(tmp_path):
    """The npy probe is vectors.formats' (same versions, dtypes, size check), plus what
    read_rows needs: floating-point rows in C order."""
    from distributed_ondisk.errors import VectorFileError

    x = make_clustered(50, 4, seed=2)
    ok = tmp_path / "v3.npy"
    # a version 3.0 header (uint32 length, like 2.0), which the old probe read as 2.0
    header = repr(np.lib.format.header_data_from_array_1_0(x)).encode("latin1")
    header += b" " * (-(len(header) + 13) % 64) + b"\n"
    ok.write_bytes(b"\x93NUMPY\x03\x00" + np.uint32(len(header)).tobytes() + header + x.tobytes())
    (f3,) = probe_files([str(ok)], "npy")
    np.testing.assert_array_equal(read_rows(f3, 0, 50), x)
    np.save(tmp_path / "ints.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(x))
    np.save(tmp_path / "col.npy", np.asfortranarray(x[:, :1]))  # one column: C order too
    (tmp_path / "short.npy").write_bytes((tmp_path / "ints.npy").read_bytes()[:-4])
    for name, match in (
        ("ints", "need a 2-d C-order floating-point"),
        ("fortran", "Fortran order"),
        ("short", "truncated: .npy header says shape"),
    ):
        with pytest.raises(VectorFileError, match=match):
            probe_files([str(tmp_path / f"{name}.npy")], "npy")
    assert probe_files([str(tmp_path / "col.npy")], "npy")[0].d == 1


@pytest.mark.parametrize(
    "case",
    ["mixed_d", "missing_column", "empty", "nan", "metric", "shards", "old_layout", "eval_queries"],
)
def test_bad_inputs_are_refused_clearly(tmp_path, case):
    x = make_clustered(3000, 16, seed=1)
    emb = tmp_path / "emb"
    kw = {}
    if case == "mixed_d":
        write_npy_parts(emb, x, [0, 1500])
        np.save(emb / "part99.npy", make_clustered(100, 8))
        match = "differ in dimension.*d=16.*part99.npy has d=8"
    elif case == "missing_column":
        write_parquet_parts(emb, x, [0, 3000])
        kw = {"file_format": "parquet", "embedding_column_name": "vec"}
        match = "no column 'vec'"
    elif case == "empty":
        emb.mkdir()
        match = "holds no .npy file"
    elif case == "nan":
        x[2222, 3] = np.nan
        write_npy_parts(emb, x, [0, 1000, 3000])
        match = r"part01.npy: row 1222 contains NaN"
    elif case == "metric":
        write_npy_parts(emb, x, [0, 3000])
        kw = {"metric_type": "cosine"}
        match = "metric_type 'cosine': expected one of l2, ip"
    elif case == "old_layout":  # older versions wrote a folder at index_path
        write_npy_parts(emb, x, [0, 3000])
        (tmp_path / "index" / "hslices").mkdir(parents=True)
        match = "index is a folder .*older versions"
    elif case == "eval_queries":
        write_npy_parts(emb, x, [0, 3000])
        kw = {"eval_queries": -1}
        match = "eval_queries must be an integer >= 0"
    else:
        write_npy_parts(emb, x, [0, 3000])
        kw = {"index_key": "IVF16_HNSW32,SQ8", "nb_indices_to_keep": 17}
        match = "nb_indices_to_keep=17"
    with pytest.raises(InputError, match=match):
        build_index(str(emb), str(tmp_path / "index"), str(tmp_path / "infos.json"), **kw)
    assert not (tmp_path / "index.parts" / "trained.index").exists()  # refused before training
    assert not (tmp_path / "infos.json").exists()


# ---- a whole local build ----------------------------------------------------------------


def faiss_file_ids(path, flags=0):
    """(ntotal, every id in the lists) of an index file as plain faiss opens it."""
    import faiss

    index = faiss.read_index(str(path), flags)
    il = faiss.extract_index_ivf(index).invlists
    ids = [
        faiss.rev_swig_ptr(il.get_ids(j), il.list_size(j)).copy()
        for j in range(il.nlist)
        if il.list_size(j)
    ]
    return index.ntotal, np.concatenate(ids) if ids else np.empty(0, np.int64)


def test_local_build_parquet_with_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distributed_ondisk.search.combined import CombinedIndex

    x = make_clustered(9000, 16, seed=5)
    write_parquet_parts(tmp_path / "pq", x, [0, 4000, 6500, 9000])
    # ids of earlier builds (the names before the Workdir's, another piece count): the
    # folder is read as one dataset, so the build must remove them
    stale = tmp_path / "index.parts" / "ids"
    stale.mkdir(parents=True)
    for name in ("ids_00000_of_00004.parquet", "ids_0001_of_0002.parquet"):
        pq.write_table(pa.table({"key": ["k0", "k1"], "i": np.arange(2)}), stale / name)
    index, infos = build_index(
        f"file://{tmp_path / 'pq'}",
        str(tmp_path / "index"),
        str(tmp_path / "infos.json"),
        file_format="parquet",
        id_columns=["key"],
        nb_indices_to_keep=3,
        eval_queries=100,
        kmeans_niter=8,
    )
    n = 9000  # every row, none held out
    assert index.ntotal == n and infos["nb_vectors"] == n
    assert infos["queries"] == "sample of 100 indexed rows, seed 1234"
    # autofaiss's names for 3 indices: index1..index3, which plain faiss opens
    assert [f["path"] for f in infos["index_files"]] == [
        str(tmp_path / f"index{i}") for i in (1, 2, 3)
    ]
    parts = [faiss_file_ids(tmp_path / f"index{i}") for i in (1, 2, 3)]
    assert sum(nt for nt, _ in parts) == n
    assert np.array_equal(np.sort(np.concatenate([ids for _, ids in parts])), np.arange(n))
    on_disk = json.loads((tmp_path / "infos.json").read_text())
    assert on_disk["index_key"] == infos["index_key"]
    assert set(on_disk["timings_s"]) >= {"kmeans", "trained_index", "vslices", "merge"}
    r16 = next(p for p in on_disk["recall"]["points"] if p["nprobe"] == 16)
    assert r16["recall@10"] >= 0.9
    # ids: every indexed row once, mapped back to its key
    ids = pq.ParquetDataset(tmp_path / "index.parts" / "ids").read()
    i = ids.column("i").to_numpy()
    assert sorted(i.tolist()) == list(range(n))
    keys = dict(zip(i.tolist(), ids.column("key").to_pylist()))
    assert keys[4321] == "k4321"
    npieces = infos["nb_pieces"]
    assert {p.name for p in stale.iterdir()} == {
        f"ids_{j:04d}_of_{npieces:04d}.parquet" for j in range(npieces)
    }
    # exact rows come back first from the reopened index
    again = CombinedIndex(tmp_path / "index.parts" / "hslices")
    _, I = again.search(x[:50], 1, nprobe=16)
    assert (I[:, 0] == np.arange(50)).mean() > 0.9


def test_cli_and_package_entry_point(tmp_path):
    import subprocess
    import sys

    import distributed_ondisk

    assert distributed_ondisk.build_index is build_index
    assert distributed_ondisk.open_index is open_index
    write_npy_parts(tmp_path / "emb", make_clustered(3000, 8, seed=2), [0, 1000, 3000])
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "distributed_ondisk.autobuild",
            "--embeddings",
            str(tmp_path / "emb"),
            "--index_path",
            str(tmp_path / "index"),
            "--index_infos_path",
            str(tmp_path / "infos.json"),
            "--kmeans_niter",
            "4",
            "-q",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["nb_vectors"] == 3000  # every row
    assert distributed_ondisk.open_index(tmp_path / "index").ntotal == 3000
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "distributed_ondisk.autobuild",
            "--embeddings",
            str(tmp_path / "none"),
            "--index_path",
            str(tmp_path / "i2"),
            "--index_infos_path",
            str(tmp_path / "i2.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "none: no such file or folder" in bad.stderr


def test_scan_brings_back_the_kmeans_sample(tmp_path, monkeypatch):
    """The k-means sample and fingerprint rows come back with the scan: no second read,
    and the same centroids as reading them apart (the hint disabled)."""
    from distributed_ondisk.autobuild import api, training
    from distributed_ondisk.datasets import make_clustered

    write_npy_parts(tmp_path / "emb", make_clustered(6000, 8, seed=3), [0, 2500, 6000])
    kw = {
        "index_key": "IVF16_HNSW32,SQ8",
        "kmeans_niter": 4,
        "eval_queries": 50,
        "max_points_per_centroid": 100,
        "seed": 5,
    }  # 1600 sampled of 5950 rows

    def no_read(*a, **k):
        raise AssertionError("training rows read again after the scan")

    with monkeypatch.context() as m:
        m.setattr(training, "read_piece_subset", no_read)
        _, infos = build_index(
            str(tmp_path / "emb"), str(tmp_path / "a"), str(tmp_path / "a.json"), **kw
        )
    assert infos["kmeans"]["n_train"] == 1600
    with monkeypatch.context() as m:
        m.setattr(api, "kmeans_rows_hint", lambda n, cfg, on_driver: np.array([0]))
        build_index(str(tmp_path / "emb"), str(tmp_path / "b"), str(tmp_path / "b.json"), **kw)
    np.testing.assert_array_equal(
        np.load(tmp_path / "a.parts" / "centroids.npy"),
        np.load(tmp_path / "b.parts" / "centroids.npy"),
    )


# ---- inner product ------------------------------------------------------------------


def test_augmented_l2_ranks_by_inner_product():
    import faiss

    from distributed_ondisk.autobuild.mips import augment, max_sq_norm

    rs = np.random.default_rng(4)
    x = (rs.standard_normal((3000, 12)) * rs.uniform(0.1, 5, (3000, 1))).astype(np.float32)
    q = rs.standard_normal((200, 12)).astype(np.float32)
    m = float(np.sqrt(max_sq_norm(x)))
    xa = augment(x, m)
    qa = np.hstack([q, np.zeros((200, 1), np.float32)])
    D, I = faiss.knn(qa, xa, 5)
    Dip, Iip = faiss.knn(q, x, 5, metric=faiss.METRIC_INNER_PRODUCT)
    assert (I == Iip).mean() > 0.999
    np.testing.assert_allclose(((q * q).sum(1)[:, None] + m * m - D) / 2, Dip, rtol=1e-3, atol=1e-2)
    with pytest.raises(InputError, match="over the indexed data's largest norm"):
        augment(x * 2, m)


def test_local_build_inner_product_on_vectors_of_any_norm(tmp_path):
    import faiss

    from distributed_ondisk.autobuild import InnerProductIndex, open_index

    x = make_clustered(12000, 16, seed=8)
    x *= np.random.default_rng(1).uniform(0.2, 3.0, (len(x), 1)).astype(np.float32)
    write_npy_parts(tmp_path / "emb", x, [0, 5000, 12000])
    index, infos = build_index(
        str(tmp_path / "emb"),
        str(tmp_path / "index"),
        str(tmp_path / "infos.json"),
        metric_type="ip",
        eval_queries=200,
        eval_holdout=True,
        index_key="RR16,IVF64_HNSW32,SQfp16",
        nb_indices_to_keep=2,
    )
    assert isinstance(index, InnerProductIndex) and index.d == 16
    assert infos["metric_type"] == "ip" and infos["index_d"] == 17
    assert infos["index_key"] == "RR17,IVF64_HNSW32,SQfp16"
    assert infos["queries"] == "200 held-out rows" and infos["nb_vectors"] == 11800
    assert np.isclose(infos["max_norm"], np.linalg.norm(x[:11800], axis=1).max(), rtol=1e-6)
    r16 = next(p for p in infos["recall"]["points"] if p["nprobe"] == 16)
    assert r16["recall@10"] >= 0.95  # against inner-product brute force
    q = x[11800:]  # the held-out rows
    Dt, It = faiss.knn(q, x[:11800], 10, metric=faiss.METRIC_INNER_PRODUCT)
    again = open_index(tmp_path / "index")
    D, I = again.search(q, 10, nprobe=64)  # every list: only the codes' rounding
    assert (I[:, 0] == It[:, 0]).mean() > 0.99
    assert np.all(np.diff(D, axis=1) <= 0)  # largest inner product first
    np.testing.assert_allclose(D[:, 0], Dt[:, 0], rtol=2e-3, atol=1e-2)

    # plain faiss: d-dimensional queries (the 0 coordinate is appended by the file's own
    # transform), ranked by inner product, augmented-L2 distances; the two shards' results
    # merged as for autofaiss's index_path1..N
    Ds, Is = [], []
    for i in (1, 2):
        f = faiss.read_index(str(tmp_path / f"index{i}"))
        assert f.d == 16
        faiss.extract_index_ivf(f).nprobe = 64
        Dp, Ip = f.search(q, 10)
        Ds.append(Dp)
        Is.append(Ip)
    Dm, Im = np.hstack(Ds), np.hstack(Is)
    order = np.argsort(np.where(Im < 0, np.inf, Dm), axis=1, kind="stable")[:, :10]
    Ip = np.take_along_axis(Im, order, 1)
    assert (Ip[:, 0] == It[:, 0]).mean() > 0.99
    ip_plain = (
        (q * q).sum(1)[:, None] + infos["max_norm"] ** 2 - np.take_along_axis(Dm, order, 1)
    ) / 2
    np.testing.assert_allclose(ip_plain[:, 0], Dt[:, 0], rtol=2e-3, atol=1e-2)


def test_local_build_faiss_file_every_row_moved_and_resumed(tmp_path):
    """nb_indices_to_keep=1: one faiss file at index_path with all rows; it opens with
    plain faiss where it was written and with IO_FLAG_ONDISK_SAME_DIR once moved; a
    rerun finds the shard complete and leaves its lists untouched; holding out is asked for."""
    import faiss

    x = make_clustered(5000, 8, seed=9)
    write_npy_parts(tmp_path / "emb", x, [0, 1800, 5000])
    kw = {"index_key": "IVF32_HNSW32,SQ8", "kmeans_niter": 4, "eval_queries": 300, "seed": 3}
    out = tmp_path / "a" / "knn.index"
    index, infos = build_index(str(tmp_path / "emb"), str(out), str(tmp_path / "i.json"), **kw)
    assert infos["nb_vectors"] == 5000 and infos["nb_input_rows"] == 5000
    rec = infos["recall"]
    assert rec["queries"] == infos["queries"] == "sample of 300 indexed rows, seed 3"
    assert "distance 0" in rec["note"]
    assert rec["points"][-1]["recall@1"] > 0.9 and rec["points"][-1]["10-recall@10"] > 0.8
    ntotal, ids = faiss_file_ids(out)
    assert ntotal == 5000 and np.array_equal(np.sort(ids), np.arange(5000))
    f = faiss.read_index(str(out))
    faiss.extract_index_ivf(f).nprobe = 32
    _, I = f.search(x[:100], 1)
    _, Io = index.search(x[:100], 1, nprobe=32)
    assert (I[:, 0] == np.arange(100)).mean() > 0.95 and (I == Io).mean() > 0.95
    lists = out.with_name("knn.index.ivfdata")
    stamp = lists.stat().st_mtime_ns
    _, again = build_index(str(tmp_path / "emb"), str(out), str(tmp_path / "i.json"), **kw)
    assert lists.stat().st_mtime_ns == stamp and again["nb_vectors"] == 5000
    (tmp_path / "a").rename(tmp_path / "b")
    moved = tmp_path / "b" / "knn.index"
    with pytest.raises(RuntimeError, match="could not open"):  # the stored absolute path
        faiss.read_index(str(moved))
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    assert faiss_file_ids(moved, flags)[0] == 5000
    assert open_index(moved).ntotal == 5000 and open_index(moved.with_name("knn.index.parts"))
    _, held = build_index(
        str(tmp_path / "emb"),
        str(tmp_path / "h"),
        str(tmp_path / "h.json"),
        eval_holdout=True,
        **kw,
    )
    assert held["nb_vectors"] == 4700 and held["queries"] == "300 held-out rows"
    assert held["recall"]["note"] == "the queries are not in the index"
    assert faiss_file_ids(tmp_path / "h")[0] == 4700
