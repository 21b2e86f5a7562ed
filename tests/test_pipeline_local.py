"""run_on_cluster.bash local_pipeline end to end on a small bvecs file, for real:
local k-means servers over RPC, vslices and hslices in parallel, search servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.vectors import write_vectors

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = {
    "K": "64",
    "NITER": "4",
    "NQ": "200",
    "NVSLICES": "3",
    "NHSLICES": "2",
    "SEARCH_SERVERS": "2",
    "KMEANS_SERVERS": "2",
    "NPROBE": "1,8",
    "TRAIN_ROWS": "5000",
}


def run_target(target: str, workdir: Path, data: Path, **extra: str):
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(data), WORKDIR=str(workdir))
    env.update(SMALL)
    env.update(extra)
    return subprocess.run(
        ["bash", str(REPO / "run_on_cluster.bash"), target],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def server_processes(workdir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], check=False, capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if str(workdir) in l and is_server(l)]


def is_server(command_line: str) -> bool:
    """A k-means or search server, started as a script or as a subcommand."""
    return any(
        s in command_line for s in ("--server", "search_server.py", "distributed_ondisk serve")
    )


@pytest.fixture(scope="module")
def bvecs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "base.bvecs"
    write_vectors(path, make_clustered(12000, 24, n_clusters=40, seed=5, dtype=np.uint8))
    return path


def test_local_pipeline_on_bvecs_writes_report_and_leaves_no_servers(tmp_path, bvecs):
    wd = tmp_path / "w"
    r = run_target("local_pipeline", wd, bvecs)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert (report["n"], report["d"], report["nlist"]) == (12000, 24, 64)  # every row
    assert report["queries"] == "sample of 200 indexed rows, seed 1234"
    points = json.loads((wd / "search_report.json").read_text())
    assert {p["queries"] for p in points} == {report["queries"]}
    assert np.array_equal(np.sort(shard_ids(wd)), np.arange(12000))
    assert report["kmeans_objective"] > 0
    assert set(report["timings_s"]) >= {
        "prepare",
        "kmeans",
        "trained_index",
        "vslices",
        "hslices",
        "search",
    }
    by_variant = {(p["variant"], p["nprobe"]): p for p in report["search"]}
    assert set(by_variant) == {(v, n) for v in ("in-RAM", "on-disk", "distributed") for n in (1, 8)}
    for n in (1, 8):  # the three ways of searching the same index agree exactly
        assert (
            by_variant[("on-disk", n)]["recall_at_10"] == by_variant[("in-RAM", n)]["recall_at_10"]
        )
        assert (
            by_variant[("distributed", n)]["recall_at_10"]
            == by_variant[("in-RAM", n)]["recall_at_10"]
        )
    assert by_variant[("on-disk", 8)]["recall_at_10"] > 0.8
    assert (wd / "recall.png").stat().st_size > 0
    assert server_processes(wd) == []

    # Rerun: every stage finds its outputs and skips; the shards are untouched.
    shards = sorted((wd / "hslices").glob("*.invlists"))
    before = [p.stat().st_mtime_ns for p in shards]
    r2 = run_target("local_pipeline", wd, bvecs)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in shards] == before
    assert server_processes(wd) == []


def shard_ids(workdir: Path) -> np.ndarray:
    """Every id in the shards' lists."""
    import faiss

    from distributed_ondisk.search.combined import CombinedIndex

    index = CombinedIndex(workdir / "hslices")  # alive while its lists are read
    il = index.ivf.invlists
    return np.concatenate(
        [
            faiss.rev_swig_ptr(il.get_ids(j), il.list_size(j)).copy()
            for j in range(il.nlist)
            if il.list_size(j)
        ]
    )


def test_local_pipeline_holdout_is_explicit(tmp_path, bvecs):
    wd = tmp_path / "w"
    r = run_target("local_pipeline", wd, bvecs, HOLDOUT="1", NPROBE="8")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert report["n"] == 11800 and report["queries"] == "200 held-out rows"
    assert np.array_equal(np.sort(shard_ids(wd)), np.arange(11800))


def test_local_pipeline_refuses_k_larger_than_data(tmp_path, bvecs):
    r = run_target("local_pipeline", tmp_path / "w", bvecs, K="20000")
    assert r.returncode != 0
    assert "K=20000" in r.stderr and "12000" in r.stderr


def test_help_lists_targets():
    r = subprocess.run(
        ["bash", str(REPO / "run_on_cluster.bash")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0
    for target in (
        "demo",
        "local_pipeline",
        "pipeline",
        "test_kmeans_0",
        "make_index_vslices",
        "make_index_hslices",
        "slurm_distributed_kmeans",
        "run_search_servers",
    ):
        assert target in r.stdout
