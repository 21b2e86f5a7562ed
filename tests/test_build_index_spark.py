"""build_index(distributed="pyspark") on a real local Spark (``local[2,4]``: 2 cores,
a task may fail 3 times before the job does), one session shared by every test."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_build_index import faiss_file_ids, write_npy_parts, write_parquet_parts

from distributed_ondisk.autobuild import build_index
from distributed_ondisk.autobuild.tasks import FailOnce
from distributed_ondisk.datasets import make_clustered, make_queries
from distributed_ondisk.errors import InputError

pyspark = pytest.importorskip("pyspark", reason="pyspark not installed: pip install '.[spark]'")
pytestmark = [pytest.mark.spark, pytest.mark.slow]

COMMON = {
    "index_key": "RR16,IVF64_HNSW32,SQ8",
    "kmeans_niter": 6,
    "eval_queries": 100,
    "max_points_per_centroid": 64,
    "seed": 7,
}


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("test_build_index")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    # py4j logs "Closing down clientserver connection" from __del__ at interpreter exit,
    # after pytest closed the streams: a "Logging error" traceback in every run.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def data():
    return make_clustered(12000, 16, seed=11)


def _build(emb, out, distributed, **kw):
    return build_index(
        str(emb),
        str(out / "index"),
        str(out / "infos.json"),
        distributed=distributed,
        **{**COMMON, **kw},
    )


def test_spark_build_equals_local_build_npy(spark, data, tmp_path):
    write_npy_parts(tmp_path / "emb", data, [0, 3000, 7000, 12000])
    local, li = _build(tmp_path / "emb", tmp_path / "local", None, nb_indices_to_keep=2)
    remote, si = _build(tmp_path / "emb", tmp_path / "spark", "pyspark", nb_indices_to_keep=2)
    assert si["distributed"] == "pyspark" and li["distributed"] == "local"
    assert si["kmeans"]["placement"] == "driver"  # the sample fits: as autofaiss
    # more pieces than files, sampled rows from every file (8k rows > 64 x 64 sample)
    assert si["nb_pieces"] > 3 and si["kmeans"]["n_train"] == 64 * 64
    c_local = np.load(tmp_path / "local" / "index.parts" / "centroids.npy")
    c_spark = np.load(tmp_path / "spark" / "index.parts" / "centroids.npy")
    np.testing.assert_array_equal(c_local, c_spark)
    assert li["kmeans"]["objective"] == si["kmeans"]["objective"]
    xq = make_queries(200, 16, seed=12)
    Dl, Il = local.search(xq, 10, nprobe=8)
    Ds, Is = remote.search(xq, 10, nprobe=8)
    np.testing.assert_array_equal(Il, Is)
    np.testing.assert_array_equal(Dl, Ds)
    assert remote.ntotal == 12000 and si["queries"] == "sample of 100 indexed rows, seed 7"
    # what plain faiss opens: index1, index2, with every row once
    parts = [faiss_file_ids(tmp_path / "spark" / f"index{i}") for i in (1, 2)]
    assert sum(nt for nt, _ in parts) == 12000
    assert np.array_equal(np.sort(np.concatenate([i for _, i in parts])), np.arange(12000))
    assert [p["recall@10"] for p in si["recall"]["points"]] == [
        p["recall@10"] for p in li["recall"]["points"]
    ]


def test_spark_kmeans_over_partitions_when_sample_does_not_fit_driver(spark, data, tmp_path):
    """A memory budget under the driver's k-means needs but over a worker's share: the
    iterations run as Spark jobs over executor-read blocks, with the local result."""
    write_npy_parts(tmp_path / "emb", data, [0, 3000, 7000, 12000])
    local, li = _build(tmp_path / "emb", tmp_path / "local", None)
    remote, si = _build(
        tmp_path / "emb", tmp_path / "spark", "pyspark", current_memory_available="2600K"
    )
    assert li["kmeans"]["placement"] == "driver"
    assert si["kmeans"]["placement"] == "distributed"
    np.testing.assert_array_equal(
        np.load(tmp_path / "local" / "index.parts" / "centroids.npy"),
        np.load(tmp_path / "spark" / "index.parts" / "centroids.npy"),
    )
    xq = make_queries(200, 16, seed=12)
    Dl, Il = local.search(xq, 10, nprobe=8)
    Ds, Is = remote.search(xq, 10, nprobe=8)
    np.testing.assert_array_equal(Il, Is)
    np.testing.assert_array_equal(Dl, Ds)


def test_spark_parquet_and_retried_task_duplicates_nothing(spark, data, tmp_path):
    import pyarrow.parquet as pq

    write_parquet_parts(tmp_path / "pq", data, [0, 5000, 12000])
    marker = tmp_path / "markers"
    marker.mkdir()
    index, _infos = _build(
        tmp_path / "pq",
        tmp_path,
        "pyspark",
        file_format="parquet",
        id_columns=["key", "n"],
        nb_indices_to_keep=3,
        _fault=FailOnce(str(marker), "vslice", 1),
    )
    assert (marker / "failed_vslice_1").exists()  # the first attempt did fail
    n = 12000  # every row
    assert index.ntotal == n
    ids = np.concatenate([_list_ids(index, j) for j in range(index.nlist)])
    assert len(ids) == n and np.array_equal(np.sort(ids), np.arange(n))
    mapping = pq.ParquetDataset(tmp_path / "index.parts" / "ids").read()
    assert sorted(mapping.column("i").to_pylist()) == list(range(n))
    assert np.array_equal(mapping.column("n").to_numpy(), mapping.column("i").to_numpy())


def _list_ids(index, j):
    import faiss

    il = index.ivf.invlists
    size = il.list_size(j)
    if size == 0:
        return np.empty(0, np.int64)
    return faiss.rev_swig_ptr(il.get_ids(j), size).copy()


def test_spark_refuses_nan_row_before_training(spark, data, tmp_path):
    x = data.copy()
    x[9000, 0] = np.inf
    write_npy_parts(tmp_path / "emb", x, [0, 6000, 12000])
    with pytest.raises(InputError, match=r"part01.npy: row 3000 contains NaN or Inf"):
        _build(tmp_path / "emb", tmp_path, "pyspark")
    assert not (tmp_path / "index.parts" / "trained.index").exists()


def test_spark_inner_product_build_equals_local(spark, data, tmp_path):
    x = data * np.linspace(0.5, 2.0, len(data), dtype=np.float32)[:, None]  # varied norms
    write_npy_parts(tmp_path / "emb", x, [0, 5000, 12000])
    local, li = _build(
        tmp_path / "emb",
        tmp_path / "local",
        None,
        metric_type="ip",
        index_key="RR16,IVF64_HNSW32,SQ8",
    )
    remote, si = _build(
        tmp_path / "emb",
        tmp_path / "spark",
        "pyspark",
        metric_type="ip",
        index_key="RR16,IVF64_HNSW32,SQ8",
    )
    assert li["max_norm"] == si["max_norm"] and si["index_d"] == 17
    np.testing.assert_array_equal(
        np.load(tmp_path / "local" / "index.parts" / "centroids.npy"),
        np.load(tmp_path / "spark" / "index.parts" / "centroids.npy"),
    )
    q = x[-100:]
    Dl, Il = local.search(q, 10, nprobe=8)
    Ds, Is = remote.search(q, 10, nprobe=8)
    np.testing.assert_array_equal(Il, Is)
    np.testing.assert_array_equal(Dl, Ds)


def test_spark_holdout_is_explicit_and_single_file_opens_in_faiss(spark, data, tmp_path):
    write_npy_parts(tmp_path / "emb", data, [0, 5000, 12000])
    _, infos = _build(tmp_path / "emb", tmp_path, "pyspark", eval_holdout=True)
    assert infos["nb_vectors"] == 11900 and infos["queries"] == "100 held-out rows"
    ntotal, ids = faiss_file_ids(tmp_path / "index")
    assert ntotal == 11900 and np.array_equal(np.sort(ids), np.arange(11900))


def test_spark_missing_pyspark_named_before_work(tmp_path, monkeypatch):
    from distributed_ondisk import extras

    monkeypatch.setattr(extras, "missing_modules", lambda extra: ["pyspark"])
    with pytest.raises(InputError, match="distributed='pyspark' needs pyspark"):
        build_index(
            str(tmp_path / "nothing"),
            str(tmp_path / "index"),
            str(tmp_path / "infos.json"),
            distributed="pyspark",
        )
