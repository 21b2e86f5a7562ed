"""Scripts and benchmarks in a shell where the README's exports were done.

The README tells users to ``export DISTRIBUTED_ONDISK_SECRET_FILE=...``; some
also export ``DISTRIBUTED_ONDISK_SECRET``.  Whatever is exported, an explicit
``--secret-file`` wins, and a benchmark that makes its own secret passes it by
flag, so it works in such a shell.  With both variables set and no flag, the
scripts refuse in one line naming both (which one was meant is not knowable).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans.local import LocalServers
from distributed_ondisk.rpc import write_secret_file

pytest.importorskip("faiss", reason="the k-means servers and benchmarks need faiss")
pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def exported(tmp_path, monkeypatch):
    """Both variables exported, to a secret that is *not* the servers' own."""
    user = tmp_path / "user.secret"
    write_secret_file(user)
    monkeypatch.setenv("DISTRIBUTED_ONDISK_SECRET_FILE", str(user))
    monkeypatch.setenv("DISTRIBUTED_ONDISK_SECRET", "y" * 40)
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    return user


def run(*cmd, timeout=180):
    return subprocess.run(
        [sys.executable, *map(str, cmd)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_secret_file_flag_wins_over_the_environment(exported, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, make_clustered(2000, 8, n_clusters=50, seed=1))
    with LocalServers(str(path), 2000, 2) as servers:  # servers get --secret-file
        for a in servers.addresses:
            r = run("rpc.py", "ping", a, "--timeout", "30", "--secret-file", servers.secret_file)
            assert r.returncode == 0, r.stderr
        out = tmp_path / "c.npy"
        r = run(
            "distributed_kmeans.py",
            "--client",
            "--servers",
            " ".join(servers.addresses),
            "--secret-file",
            servers.secret_file,
            "--k",
            "8",
            "--niter",
            "2",
            "--out",
            out,
        )
        assert r.returncode == 0, r.stderr
        assert np.load(out).shape == (8, 8)
        # no flag, both variables: one line naming both, before connecting
        r = run("rpc.py", "ping", servers.addresses[0], "--timeout", "5")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "DISTRIBUTED_ONDISK_SECRET and DISTRIBUTED_ONDISK_SECRET_FILE" in lines[0]


def test_benchmarks_run_with_the_variables_exported(exported, tmp_path):
    r = run(
        "benchmarks/bench_kmeans.py",
        "--n",
        "6000",
        "--d",
        "8",
        "--k",
        "16",
        "--niter",
        "2",
        "--n_clusters",
        "200",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ours | 2 servers (our RPC, reduced" in r.stdout  # the row of our RPC servers
    r = run("benchmarks/bench_search.py", "--smoke", "--workdir", tmp_path / "bs")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ours, 2 servers" in r.stdout
