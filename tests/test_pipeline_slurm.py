"""`run_on_cluster.bash pipeline` through a real single-node Slurm (sbatch, srun,
array jobs, afterok chains) gives the same index and search results as
`local_pipeline` on the same data.

Skipped, with the reason, where the machine cannot run Slurm (not root, no apt);
scripts/test.bash installs slurm-wlm and munge first when it can."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.vectors import write_vectors

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]

# TRAIN_NT=1: a multi-threaded HNSW build is not reproducible, and the two runs must
# give byte-identical shards.
SETTINGS = {
    "K": "48",
    "NITER": "4",
    "NQ": "150",
    "NVSLICES": "3",
    "NHSLICES": "2",
    "SEARCH_SERVERS": "2",
    "KMEANS_SERVERS": "2",
    "KMEANS_NODES": "1",
    "SERVERS_PER_NODE": "2",
    "CPUS_PER_TASK": "1",
    "NPROBE": "1,8",
    "TRAIN_ROWS": "4000",
    "TRAIN_NT": "1",
    "SLURM_TIME": "0:10:00",
}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _env(base: dict, data: Path, workdir: Path) -> dict:
    env = dict(base, PYTHON=sys.executable, DATA=str(data), WORKDIR=str(workdir))
    env.update(SETTINGS)
    return env


def test_slurm_pipeline_equals_local_pipeline(cluster, tmp_path):
    data = tmp_path / "base.fvecs"
    write_vectors(data, make_clustered(9000, 16, n_clusters=30, seed=11))
    script = str(REPO / "run_on_cluster.bash")

    local_wd, slurm_wd = tmp_path / "local", tmp_path / "slurm"
    r = subprocess.run(
        ["bash", script, "local_pipeline"],
        check=False,
        env=_env(dict(os.environ), data, local_wd),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]

    sub = subprocess.run(
        ["bash", script, "pipeline"],
        check=False,
        env=_env(cluster.env, data, slurm_wd),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    last_job = sub.stdout.split()[-1]
    assert "--dependency=afterok" not in sub.stdout
    states = cluster.wait_for_job(last_job, timeout_s=540)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((slurm_wd / "slurm").glob("*.log")))
    assert states == ["COMPLETED"], logs

    for name in ("centroids.npy", "trained.index"):
        np.testing.assert_array_equal(
            np.fromfile(local_wd / name, dtype=np.uint8),
            np.fromfile(slurm_wd / name, dtype=np.uint8),
            err_msg=name,
        )
    local_shards = sorted((local_wd / "hslices").glob("*.invlists"))
    slurm_shards = sorted((slurm_wd / "hslices").glob("*.invlists"))
    assert len(local_shards) == 2
    assert [_sha(p) for p in local_shards] == [_sha(p) for p in slurm_shards]

    local_rep = json.loads((local_wd / "report.json").read_text())
    slurm_rep = json.loads((slurm_wd / "report.json").read_text())
    strip = lambda rep: [{k: v for k, v in p.items() if k != "qps"} for p in rep["search"]]
    assert strip(local_rep) == strip(slurm_rep)
    assert slurm_rep["kmeans_objective"] == local_rep["kmeans_objective"]
    assert set(slurm_rep["timings_s"]) >= {
        "kmeans",
        "trained_index",
        "vslices",
        "hslices",
        "search",
    }

    # run_search_servers: long-running servers in one Slurm job, each publishing its
    # address; a client over them finds what the in-process search found.
    sub = subprocess.run(
        ["bash", script, "run_search_servers"],
        check=False,
        env=_env(cluster.env, data, slurm_wd),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sub.returncode == 0, sub.stderr[-3000:]
    job = sub.stdout.split()[-1]
    try:
        addr_dir = slurm_wd / "search_servers" / f"job_{job}"
        deadline = time.monotonic() + 120
        while len(list(addr_dir.glob("*.addr"))) < 2:
            assert time.monotonic() < deadline, f"servers of job {job} never published addresses"
            assert cluster.job_states(job)[0] in ("PENDING", "RUNNING", "CONFIGURING")
            time.sleep(0.2)
        servers = ",".join(p.read_text().strip() for p in sorted(addr_dir.glob("*.addr")))
        out = slurm_wd / "served.json"
        r = subprocess.run(
            [
                sys.executable,
                str(REPO / "combined_index.py"),
                "--shards",
                str(slurm_wd / "hslices"),
                "--queries",
                str(slurm_wd / "queries.npy"),
                "--servers",
                servers,
                "--nprobe",
                "8",
                "--k",
                "100",
                "--gt",
                str(slurm_wd / "queries.gt100.ivecs"),
                "--json",
                str(out),
                "--secret-file",
                str(slurm_wd / "rpc.secret"),
                "-q",
            ],
            check=False,
            env=_env(cluster.env, data, slurm_wd),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        served = {p["variant"]: p["recall"] for p in json.loads(out.read_text())}
        ondisk = [p for p in local_rep["search"] if p["variant"] == "on-disk" and p["nprobe"] == 8]
        assert served["distributed"]["10"] == served["on-disk"]["10"] == ondisk[0]["recall_at_10"]
    finally:
        cluster.run(["scancel", job])
