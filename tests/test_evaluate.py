"""Ground truth (blocked brute force, cached with a fingerprint), recall, plots, the
search evaluation (library) and the combined_index.py / ``distributed-ondisk search``
command line end to end."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from build_helpers import clustered
from test_search_support import build_shards

from distributed_ondisk import evaluate as ev
from distributed_ondisk.errors import InputError
from distributed_ondisk.search import evaluation as sev
from distributed_ondisk.search.cli import search_cli
from distributed_ondisk.vectors import read_vectors, write_vectors


@pytest.fixture()
def data(tmp_path):
    xb, xq = clustered(5000, 16, seed=1), clustered(40, 16, seed=2)
    write_vectors(tmp_path / "base.fvecs", xb)
    write_vectors(tmp_path / "queries.fvecs", xq)
    return tmp_path, xb, xq


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_blocked_brute_force_is_exact(data, metric):
    tmp, xb, xq = data
    D, I = ev.brute_force_knn(tmp / "base.fvecs", xq, 7, metric=metric, block_rows=333)
    D0, I0 = faiss.knn(xq, xb, 7, metric=ev.METRICS[metric])
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-5)


def test_ground_truth_cache_is_reused_then_invalidated(data, monkeypatch):
    tmp, xb, _xq = data
    gt = ev.ground_truth(tmp / "base.fvecs", tmp / "queries.fvecs", 10)
    cache = tmp / "queries.gt10.ivecs"
    assert cache.is_file() and (tmp / "queries.gt10.ivecs.json").is_file()
    np.testing.assert_array_equal(read_vectors(cache), gt)

    def boom(*a, **kw):
        raise AssertionError("recomputed although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(ev, "brute_force_knn", boom)
        np.testing.assert_array_equal(
            ev.ground_truth(tmp / "base.fvecs", tmp / "queries.fvecs", 10), gt
        )
    write_vectors(tmp / "base.fvecs", xb[::-1].copy())  # same size, other content
    gt2 = ev.ground_truth(tmp / "base.fvecs", tmp / "queries.fvecs", 10)
    np.testing.assert_array_equal(gt2, len(xb) - 1 - gt)
    side = json.loads((tmp / "queries.gt10.ivecs.json").read_text())
    assert side["key"]["k"] == 10 and side["key"]["metric"] == "l2"


def test_recall_at():
    gt = np.array([[3, 1], [5, 2], [7, 0]])
    I = np.array([[3, 9, 8], [1, 5, 4], [0, 1, 2]])
    assert ev.recall_at(I, gt) == {1: pytest.approx(1 / 3)}
    assert ev.recall_at(I, gt, ranks=(1, 2, 3)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        3: pytest.approx(2 / 3),
    }
    with pytest.raises(InputError):
        ev.recall_at(I[:2], gt)


def test_evaluate_and_plot(tmp_path):
    gt = np.arange(50)[:, None]
    calls = []

    def fake(x, k, nprobe):
        calls.append(nprobe)
        I = np.tile(np.arange(50)[:, None], (1, k))
        I[: 50 // nprobe] = -1
        return np.zeros_like(I, dtype=np.float32), I

    xq = np.zeros((50, 4), dtype=np.float32)
    pts = sev.evaluate("x", fake, xq, 10, [1, 2, 5], gt)
    assert calls == [1, 2, 5]
    assert [p.recall[1] for p in pts] == [0.0, 0.5, 0.8]
    assert "R@100" in sev.format_table(pts) and all(p.qps > 0 for p in pts)
    sev.plot_curves(pts + [sev.EvalPoint("y", 3, 50, 0.1, {1: 0.5, 10: 0.9})], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError):
        ev.parse_int_list("1,x")


def test_combined_index_cli(tmp_path, capsys):
    wd, x = build_shards(tmp_path / "wd", nh=(2,), n=8000)
    write_vectors(tmp_path / "base.fvecs", x)
    write_vectors(tmp_path / "q.fvecs", clustered(100, 32, seed=5))
    argv = [
        "--shards",
        str(wd.hslice_dir),
        "--queries",
        str(tmp_path / "q.fvecs"),
        "--k",
        "100",
        "--nprobe",
        "1,16",
        "--database",
        str(tmp_path / "base.fvecs"),
        "--in-ram",
        "--plot",
        str(tmp_path / "p.png"),
        "--json",
        str(tmp_path / "r.json"),
        "-q",
    ]
    assert search_cli(argv) == 0  # what combined_index.py runs
    out = capsys.readouterr().out
    assert "on-disk" in out and "in-RAM" in out and "R@100" in out
    lines = out.splitlines()
    assert lines[0] == (
        f"8000 vectors in 2 shard(s), nlist 64, 100 queries, k=100, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    assert lines[1].split() == ["variant", "nprobe", "QPS", "R@1", "R@10", "R@100", "10-R@10"]
    assert [ln.split()[:2] for ln in lines[2:]] == [
        ["in-RAM", "1"],
        ["in-RAM", "16"],
        ["on-disk", "1"],
        ["on-disk", "16"],
    ]
    pts = json.loads((tmp_path / "r.json").read_text())
    by = {(p["variant"], p["nprobe"]): p["recall"] for p in pts}
    assert by[("on-disk", 16)] == by[("in-RAM", 16)]
    assert by[("on-disk", 16)]["1"] > 0.8 and by[("on-disk", 16)]["1"] >= by[("on-disk", 1)]["1"]
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert (tmp_path / "q.gt100.ivecs").is_file()
    # a missing shard is one clear error line and exit status 2
    argv[1] = str(wd.hslice(0, 2))
    assert search_cli(argv) == 2
    assert "lists [32, 64) of 64 are in no given shard" in capsys.readouterr().err


def test_intersection_recall_counts_every_true_neighbour():
    gt = np.array([[0, 1, 2], [3, 4, 5]])
    I = np.array([[0, 2, 9], [3, 8, 7]])
    assert ev.intersection_recall(I, gt, 3) == pytest.approx((2 + 1) / 6)
    assert ev.intersection_recall(I, gt, 4) is None  # fewer than k columns
    # -1 padding (fewer than k results, or ground truth over fewer than k rows) is not a hit
    assert ev.intersection_recall(np.array([[5, -1]]), np.array([[5, -1]]), 2) == 0.5
    # a query that is an indexed row finds itself: 1-recall@1 is 1, k-recall@k is not
    assert ev.recall_at(I, gt, (1,)) == {1: 1.0}


def test_evaluate_search_library(tmp_path):
    """The function the search command runs: points, the JSON rows, the text."""
    wd, x = build_shards(tmp_path / "wd", nh=(2,), n=8000)
    write_vectors(tmp_path / "q.fvecs", x[:50])
    res = sev.evaluate_search(
        [str(wd.hslice_dir)], tmp_path / "q.fvecs", k=10, nprobes=[1, 8], database=wd.data()
    )
    assert (res.ntotal, res.nshards, res.nlist, res.nq, res.k) == (8000, 2, 64, 50, 10)
    assert [(p.variant, p.nprobe) for p in res.points] == [("on-disk", 1), ("on-disk", 8)]
    assert res.points[1].recall[1] == 1.0  # indexed rows find themselves
    rows = sev.report_rows(res.points, "first 50 rows")
    assert set(rows[0]) == {
        "variant",
        "nprobe",
        "nq",
        "seconds",
        "qps",
        "recall",
        "recall_10_at_10",
        "queries",
    }
    assert rows[1]["queries"] == "first 50 rows" and rows[1]["recall"][1] == 1.0
    assert "queries" not in sev.report_rows(res.points)[0]
    assert res.text().splitlines()[0] == res.summary()
    # no ground truth: recall not measured, said under the table
    bare = sev.evaluate_search([str(wd.hslice_dir)], tmp_path / "q.fvecs", nprobes=[4])
    assert bare.points[0].recall == {} and bare.points[0].recall_10_at_10 is None
    assert bare.text().endswith("(no --gt or --database: recall not measured)")
    with pytest.raises(InputError, match="k must be >= 1"):
        sev.evaluate_search([str(wd.hslice_dir)], tmp_path / "q.fvecs", k=0)
