"""Lock-out resistance, as real processes on loopback: 3000 silent connections (more
than the server's max_connections and its descriptor limit), renewed as the server
drops them, while `rpc.py ping` and a k-means call each succeed within 2 s, every
time, for 30 s (RELIABILITY_FLOOD_SECONDS).  And a server out of file descriptors
(EMFILE) does not spin and serves again once descriptors free up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import kmeans_server
from rpc_procs import echo_server, rpc_ping

from distributed_ondisk.errors import RPCError
from distributed_ondisk.rpc import Client
from distributed_ondisk.rpc.address import parse_address

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psutil = pytest.importorskip("psutil", reason="psutil sets the server's descriptor limit")
FLOOD = Path(__file__).with_name("flood.py")
SILENT = 3000
SERVER_FDS = 512  # the server's RLIMIT_NOFILE during the flood: far below SILENT


def start_flood(address: str, n: int, seconds: float) -> subprocess.Popen:
    host, port = parse_address(address)
    return subprocess.Popen(
        [sys.executable, str(FLOOD), host, str(port), str(n), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def flood_stats(flood: subprocess.Popen) -> dict[str, int]:
    out, _ = flood.communicate(timeout=120)
    return {k: int(v) for k, v in (kv.split("=") for kv in out.split())}


def test_silent_flood_does_not_lock_out_ping_or_kmeans(reference, tmp_path):
    seconds = float(os.environ.get("RELIABILITY_FLOOD_SECONDS", "30"))
    proc = kmeans_server(reference.root, 0, 1, reference.secret_file, tmp_path).start()
    try:
        psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))
        flood = start_flood(proc.address, SILENT, seconds + 5)
        t_end = time.monotonic() + seconds
        pings, calls, slow = 0, 0, []
        while time.monotonic() < t_end:
            r = rpc_ping(proc.address, 2.0, reference.secret_file)
            assert r.returncode == 0, f"rpc.py ping failed under the flood: {r.stderr[-500:]}"
            pings += 1
            t0 = time.monotonic()
            try:
                with Client(
                    proc.address, secret=reference.secret, timeout=2, connect_timeout=2
                ) as c:
                    assert c.call("count") > 0
            except RPCError as e:
                pytest.fail(
                    f"k-means call failed under the flood after "
                    f"{time.monotonic() - t0:.2f} s: {e}"
                )
            took = time.monotonic() - t0
            calls += 1
            if took > 2.0:
                slow.append(took)
        stats = flood_stats(flood)
        assert stats["max_open"] >= SILENT, stats  # the flood was really held
        assert stats["opened"] > SILENT, stats  # and renewed as it was dropped
        assert not slow, f"k-means calls over 2 s: {slow}"
        assert pings >= 5 and calls >= 5, (pings, calls)
        assert proc.alive(), proc.log_tail()
        with Client(proc.address, secret=reference.secret, timeout=30) as c:
            assert c.call("dim") == 16
    finally:
        proc.stop()


def test_out_of_descriptors_no_spin_then_serves_again(tmp_path):
    with echo_server(tmp_path) as (proc, secret):
        p = psutil.Process(proc.pid)
        p.rlimit(psutil.RLIMIT_NOFILE, (64, 64))
        clients, refused = [], 0
        for _ in range(100):  # authenticated connections hold descriptors: exhaust them
            try:
                clients.append(Client(proc.address, secret=secret, timeout=5, connect_timeout=2))
            except RPCError:
                refused += 1
        flood = start_flood(proc.address, 300, 8)  # and keep the backlog full meanwhile
        try:
            assert refused > 0, "the descriptor limit was never reached"
            deadline = time.monotonic() + 30
            while "Too many open files" not in proc.log_text():
                assert time.monotonic() < deadline, proc.log_text()[-2000:]
                time.sleep(0.1)
            cpu0 = sum(p.cpu_times()[:2])
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3:
                time.sleep(0.2)
            cpu = sum(p.cpu_times()[:2]) - cpu0
            assert cpu < 0.6, f"server used {cpu:.2f} s of CPU in 3 s while out of descriptors"
            assert clients[0].call("add", 1, 2) == 3  # connections it holds still work
        finally:
            for c in clients:
                c.close()
            flood_stats(flood)
        r = rpc_ping(proc.address, 10.0, tmp_path / "echo.secret")
        assert r.returncode == 0, r.stderr[-1000:]
        with Client(proc.address, secret=secret, timeout=10) as c:
            assert c.call("add", 2, 2) == 4
        assert proc.proc.poll() is None
