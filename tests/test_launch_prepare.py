"""Pipeline data preparation and the report: planning without I/O, then real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import InputError
from distributed_ondisk.launch.prepare import plan_holdout, plan_sample, prepare
from distributed_ondisk.launch.report import collect_timings, record_timing, write_report
from distributed_ondisk.vectors import read_vectors, write_vectors
from distributed_ondisk.workdir import Workdir


def test_plan_holdout_tail_and_shuffled_are_disjoint_covers():
    db, q = plan_holdout(100, 10, shuffle=False, seed=0)
    assert list(q) == list(range(90, 100)) and list(db) == list(range(90))
    db, q = plan_holdout(100, 10, shuffle=True, seed=3)
    assert len(set(db) | set(q)) == 100 and not set(db) & set(q)
    db2, q2 = plan_holdout(100, 10, shuffle=True, seed=3)
    assert (db == db2).all() and (q == q2).all()
    with pytest.raises(InputError, match="nq"):
        plan_holdout(10, 10, shuffle=False, seed=0)


def test_prepare_tail_holdout_links_without_copy(tmp_path):
    x = make_clustered(500, 8, seed=1)
    src = tmp_path / "base.fvecs"
    write_vectors(src, x)
    wd = Workdir.from_arg(tmp_path / "w")
    info = prepare(wd, str(src), nq=50, holdout=True)
    assert info["n_db"] == 450 and wd.data().is_symlink()
    assert info["query_source"] == "50 held-out rows"
    np.testing.assert_array_equal(read_vectors(info["queries"]), x[450:])
    assert prepare(wd, str(src), nq=50, holdout=True) == info  # rerun: same, nothing redone
    with pytest.raises(InputError, match="nq=50 \\(now 60\\)"):
        prepare(wd, str(src), nq=60, holdout=True)
    with pytest.raises(InputError, match="holdout=True \\(now False\\)"):
        prepare(wd, str(src), nq=50)  # the default indexes every row


def test_prepare_shuffled_holdout_queries_not_in_database(tmp_path):
    x = make_clustered(400, 6, seed=2)
    src = tmp_path / "base.npy"
    write_vectors(src, x)
    info = prepare(Workdir.from_arg(tmp_path / "w"), str(src), nq=40, shuffle=True, holdout=True)
    db, q = read_vectors(info["data"]), read_vectors(info["queries"])
    assert len(db) == 360 and len(q) == 40
    rows = {r.tobytes() for r in x}
    assert {r.tobytes() for r in db} | {r.tobytes() for r in q} == rows
    assert not {r.tobytes() for r in db} & {r.tobytes() for r in q}


def test_plan_sample_seeded_distinct_sorted():
    rows = plan_sample(1000, 30, seed=4)
    assert len(set(rows.tolist())) == 30 and np.all(np.diff(rows) > 0) and rows[-1] < 1000
    assert np.array_equal(rows, plan_sample(1000, 30, seed=4))
    assert not np.array_equal(rows, plan_sample(1000, 30, seed=5))
    assert np.array_equal(plan_sample(20, 50, seed=0), np.arange(20))  # at most every row
    with pytest.raises(InputError, match="nq=0"):
        plan_sample(10, 0, seed=0)


def test_prepare_default_indexes_every_row_and_samples_queries(tmp_path):
    x = make_clustered(500, 8, seed=1)
    src = tmp_path / "base.fvecs"
    write_vectors(src, x)
    wd = Workdir.from_arg(tmp_path / "w")
    info = prepare(wd, str(src), nq=40, seed=9)
    assert info["n_db"] == 500 and wd.data().is_symlink()  # nothing left out
    assert info["query_source"] == "sample of 40 indexed rows, seed 9"
    np.testing.assert_array_equal(read_vectors(info["queries"]), x[plan_sample(500, 40, 9)])
    with pytest.raises(InputError, match="--shuffle only applies with --holdout"):
        prepare(Workdir.from_arg(tmp_path / "w2"), str(src), nq=40, shuffle=True)
    write_vectors(tmp_path / "q.npy", x[:5])
    with pytest.raises(InputError, match="exclude each other"):
        prepare(
            Workdir.from_arg(tmp_path / "w3"),
            str(src),
            queries=str(tmp_path / "q.npy"),
            holdout=True,
        )
    info = prepare(Workdir.from_arg(tmp_path / "w4"), str(src), queries=str(tmp_path / "q.npy"))
    assert info["n_db"] == 500 and info["query_source"] == f"file {tmp_path / 'q.npy'}"


def test_prepare_refuses_queries_of_other_dimension(tmp_path):
    write_vectors(tmp_path / "b.npy", make_clustered(100, 6, seed=0))
    write_vectors(tmp_path / "q.npy", make_clustered(10, 7, seed=0))
    with pytest.raises(InputError, match="d=7"):
        prepare(
            Workdir.from_arg(tmp_path / "w"),
            str(tmp_path / "b.npy"),
            queries=str(tmp_path / "q.npy"),
        )


def test_report_spans_array_tasks_and_reads_search_points(tmp_path):
    x = make_clustered(300, 4, seed=0)
    write_vectors(tmp_path / "b.npy", x)
    wd = Workdir.from_arg(tmp_path / "w")
    prepare(wd, str(tmp_path / "b.npy"), nq=20)
    record_timing(wd, "vslices", 10.0, 12.0, task="0")
    record_timing(wd, "vslices", 11.0, 15.5, task="1")
    record_timing(wd, "kmeans", 0.0, 3.0)
    assert collect_timings(wd) == {"vslices": 5.5, "kmeans": 3.0}
    wd.search_report.write_text(
        json.dumps(
            [
                {
                    "variant": "on-disk",
                    "nprobe": 4,
                    "nq": 20,
                    "seconds": 0.1,
                    "qps": 200.0,
                    "recall": {"1": 0.5, "10": 0.9, "100": 1.0},
                }
            ]
        )
    )
    r = write_report(wd, nlist=16)
    assert (r["n"], r["d"], r["nlist"]) == (300, 4, 16)  # every row indexed
    assert r["queries"] == "sample of 20 indexed rows, seed 1234"
    assert r["search"][0]["recall_at_10"] == 0.9 and r["search"][0]["nprobe"] == 4
    assert json.loads(wd.report.read_text()) == r
