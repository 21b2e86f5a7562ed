"""k-means over real server processes: 1 vs N servers, bytes per iteration, the
faiss.contrib loop over our servers, killed/stopped servers, a SIGKILLed client
resumed bit-for-bit, refusals, and the ``--test`` levels."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import InputError, RPCTimeout
from distributed_ondisk.kmeans import FaissCompatAssign, KMeansConfig, RowSource, train_kmeans
from distributed_ondisk.kmeans.checkpoint import load_checkpoint
from distributed_ondisk.kmeans.cli import main as cli_main
from distributed_ondisk.kmeans.cpu import CPUAssign
from distributed_ondisk.kmeans.local import LocalServers
from distributed_ondisk.kmeans.remote import connect_servers

pytest.importorskip("faiss", reason="the CPU k-means servers need faiss")
pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
N, D = 8000, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kmeans_remote")
    x = make_clustered(N, D, n_clusters=400, seed=3)
    path = root / "x.npy"
    np.save(path, x)
    return x, str(path)


@pytest.fixture(scope="module")
def servers3(data):
    with LocalServers(data[1], N, 3) as s:
        yield s


def client_cmd(addresses, *extra):
    return [
        sys.executable,
        str(REPO / "distributed_kmeans.py"),
        "--client",
        "--servers",
        " ".join(addresses),
        *extra,
    ]


def test_one_vs_n_servers_and_bytes(data, servers3):
    x, path = data
    cfg = KMeansConfig(64, niter=6, seed=5, max_points_per_centroid=100)  # sampled: 6400 rows
    local = train_kmeans(CPUAssign(RowSource(x)), cfg)
    with LocalServers(path, N, 1) as one:
        ds1 = connect_servers(one.addresses, secret=one.secret, timeout=60)
        r1 = train_kmeans(ds1, cfg)
        ds1.close()
    ds3 = connect_servers(servers3.addresses, secret=servers3.secret, timeout=60)
    r3 = train_kmeans(ds3, cfg)
    for r in (r1, r3):
        np.testing.assert_allclose(r.centroids, local.centroids, rtol=1e-5, atol=1e-5)
        assert r.objective == pytest.approx(local.objective, rel=1e-6)
    limit = 8 * 64 * (D + 1) + 64 * 1024
    for shard in ds3.shards:
        ds3.assign_to(local.centroids)
        sent, received = shard.last_call_bytes
        assert 0 < sent <= limit and 0 < received <= limit, (sent, received, limit)
    ds3.close()


def test_faiss_contrib_loop_drives_our_servers(data, servers3):
    from faiss.contrib.clustering import kmeans

    x, _ = data
    ds = connect_servers(servers3.addresses, secret=servers3.secret, timeout=60)
    ds.select(None)
    c_remote = kmeans(20, FaissCompatAssign(ds), niter=4, seed=2, verbose=False)
    c_local = kmeans(20, FaissCompatAssign(CPUAssign(RowSource(x))), niter=4, seed=2, verbose=False)
    np.testing.assert_allclose(c_remote, c_local, rtol=1e-5, atol=1e-4)
    ds.close()


def _wait_checkpoint(path, proc, iterations=2, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if load_checkpoint(path).iteration >= iterations:
                return
        except InputError:
            pass
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_dead_or_silent_server_is_named_and_resume_finishes(data, tmp_path, how):
    _, path = data
    ck = tmp_path / "ck.npz"
    args = [
        "--k",
        "32",
        "--niter",
        "100000",
        "--max_points_per_centroid",
        "10000",
        "--checkpoint",
        str(ck),
        "--timeout",
        "3",
    ]
    with LocalServers(path, N, 2) as servers:
        env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET_FILE=servers.secret_file)
        proc = subprocess.Popen(
            client_cmd(servers.addresses, *args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_checkpoint(ck, proc)
            victim = servers.procs[1]
            victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            _, err = proc.communicate(timeout=60)
        finally:
            servers.procs[1].send_signal(signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 2, err
    assert servers.addresses[1] in err and "iteration" in err, err
    done = load_checkpoint(ck).iteration
    with LocalServers(path, N, 2) as servers:
        env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET_FILE=servers.secret_file)
        args[3] = str(done + 2)
        out = subprocess.run(
            client_cmd(servers.addresses, *args, "--resume", "--out", str(tmp_path / "c.npy")),
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    assert load_checkpoint(ck).iteration == done + 2
    assert np.load(tmp_path / "c.npy").shape == (32, D)


def test_sigkilled_client_resumes_bit_identical(data, tmp_path):
    _, path = data
    common = ["--k", "48", "--niter", "10", "--max_points_per_centroid", "120", "--seed", "9"]
    with LocalServers(path, N, 2) as servers:
        env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET_FILE=servers.secret_file)
        run = [*common, "--checkpoint", str(tmp_path / "a.npz"), "--out", str(tmp_path / "a.npy")]
        proc = subprocess.Popen(
            client_cmd(servers.addresses, *run),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_checkpoint(tmp_path / "a.npz", proc)
            servers.procs[0].send_signal(signal.SIGSTOP)  # freeze the client mid-iteration
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            servers.procs[0].send_signal(signal.SIGCONT)
        killed_at = load_checkpoint(tmp_path / "a.npz").iteration
        assert 2 <= killed_at < 10 and not (tmp_path / "a.npy").exists()
        for extra in (["--resume"], []):
            ck = "a" if extra else "b"
            args = [
                *common,
                "--checkpoint",
                str(tmp_path / f"{ck}.npz"),
                "--out",
                str(tmp_path / f"{ck}.npy"),
                *extra,
            ]
            out = subprocess.run(
                client_cmd(servers.addresses, *args),
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.tobytes() == b.tobytes()


def test_servers_of_different_dimensions_are_refused(data, tmp_path, servers3):
    other = tmp_path / "d8.npy"
    np.save(other, make_clustered(500, 8, seed=1))
    with (
        LocalServers(str(other), 500, 1, secret_file=servers3.secret_file) as s8,
        pytest.raises(InputError, match="differ in dimension"),
    ):
        connect_servers(servers3.addresses + s8.addresses, secret=servers3.secret)


def test_unreachable_server_is_named():
    with pytest.raises(RPCTimeout, match="127.0.0.1:9"):
        connect_servers(["127.0.0.1:9"], secret=b"x" * 32, wait_s=0.5)


def test_server_refuses_nan_file_naming_it(tmp_path):
    x = make_clustered(300, 8, seed=1)
    x[123, 4] = np.inf
    path = tmp_path / "bad.npy"
    np.save(path, x)
    with pytest.raises(RPCTimeout, match=r"bad\.npy.*row 123"):
        LocalServers(str(path), 300, 1).__enter__()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--k", "0"], "k must be >= 1"),
        (["--k", "9000"], "larger than the number of vectors"),
        (["--k", "10", "--gpu", "0"], "no CUDA device|GPU"),
    ],
)
def test_cli_refusals(data, capsys, argv, match):
    assert cli_main(["--indata", data[1], "--niter", "1", *argv]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_resume_with_other_dimension_is_refused(data, tmp_path, capsys):
    ck = str(tmp_path / "ck.npz")
    assert (
        cli_main(
            [
                "--indata",
                data[1],
                "--k",
                "10",
                "--niter",
                "2",
                "--checkpoint",
                ck,
                "--out",
                str(tmp_path / "c.fvecs"),
            ]
        )
        == 0
    )
    other = tmp_path / "d8.npy"
    np.save(other, make_clustered(N, 8, seed=1))
    capsys.readouterr()
    assert (
        cli_main(
            ["--indata", str(other), "--k", "10", "--niter", "3", "--checkpoint", ck, "--resume"]
        )
        == 2
    )
    assert "dimension 16" in capsys.readouterr().err


def test_cli_nan_in_process_names_file(tmp_path, capsys):
    x = make_clustered(300, 8, seed=1)
    x[7, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert cli_main(["--indata", str(tmp_path / "nan.npy"), "--k", "4"]) == 2
    err = capsys.readouterr().err
    assert "nan.npy" in err and "row 7" in err


def test_test_levels_agree():
    """On the built-in data (with many more mixture components than k the objective
    is a stable function of the seed, so a 0.5 % check means something)."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "distributed_kmeans.py"),
            "--test",
            "0,1,2,3",
            "--nservers",
            "3",
            "--insecure",
            "-q",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(f"level {lv}" in out.stdout for lv in range(4)) and "OK" in out.stdout
    with pytest.raises(InputError):
        from distributed_ondisk.kmeans.testlevels import parse_levels

        parse_levels("1,7")
