"""After authentication, as real `rpc.py serve-echo` processes: a client that never
reads its reply is dropped after the send deadline, a silent authenticated client
after the idle timeout, neither pins the server (its threads and descriptors come
back); errors reach the peer as type and message only unless --debug-errors."""

from __future__ import annotations

import time

import pytest
from rpc_procs import echo_server

from distributed_ondisk.errors import RemoteError
from distributed_ondisk.rpc import Client, framing
from distributed_ondisk.rpc.address import parse_address
from distributed_ondisk.rpc.auth import client_handshake

pytestmark = [pytest.mark.integration]
psutil = pytest.importorskip("psutil", reason="psutil counts the server's threads and fds")
PEERS = 8


def authed(address: str, secret: bytes):
    import socket

    return client_handshake(
        socket.create_connection(parse_address(address), timeout=10), secret, address
    )


def settled_counts(p, window: float = 1.0) -> tuple[int, int]:
    """The server's threads and fds at rest: the lowest seen over ``window`` seconds
    (the connection that waited for readiness may still be winding down at start)."""
    deadline = time.monotonic() + window
    threads, fds = p.num_threads(), p.num_fds()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        threads, fds = min(threads, p.num_threads()), min(fds, p.num_fds())
    return threads, fds


def wait_back_to(p, threads0: int, fds0: int, within: float) -> None:
    deadline = time.monotonic() + within
    while (p.num_threads() > threads0 or p.num_fds() > fds0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.num_threads() <= threads0, (p.num_threads(), threads0)
    assert p.num_fds() <= fds0, (p.num_fds(), fds0)


def test_client_that_never_reads_its_reply_is_dropped(tmp_path):
    with echo_server(tmp_path, "--send-timeout", "1", "--idle-timeout", "30") as (proc, secret):
        p = psutil.Process(proc.pid)
        threads0, fds0 = settled_counts(p)
        stuck = []
        for _ in range(PEERS):  # 32 MB replies, far beyond what socket buffers hold
            chan = authed(proc.address, secret)
            framing.send_message(chan, framing.KIND_REQUEST, 1, ("make_array", (8_000_000,), {}))
            stuck.append(chan)
        deadline = time.monotonic() + 20
        while p.num_threads() < threads0 + PEERS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.num_threads() >= threads0 + PEERS  # all of them are stuck sending now
        t0 = time.monotonic()
        with Client(proc.address, secret=secret, timeout=10) as c:  # not pinned
            assert c.call("add", 1, 2) == 3
        assert time.monotonic() - t0 < 5
        # 1 s + 32 MB at 10 MB/s = 4.2 s deadline; then the threads and sockets are gone
        wait_back_to(p, threads0, fds0, within=20)
        assert "did not take its reply" in proc.log_text()
        for chan in stuck:
            chan.close()


def test_silent_authenticated_client_is_dropped_after_idle_timeout(tmp_path):
    with echo_server(tmp_path, "--idle-timeout", "1.5") as (proc, secret):
        p = psutil.Process(proc.pid)
        threads0, fds0 = settled_counts(p)
        chans = [authed(proc.address, secret) for _ in range(PEERS)]
        t0 = time.monotonic()
        for chan in chans:
            chan.settimeout(20)
            assert chan.recv(1) == b""  # closed by the server, nothing sent
        assert 1.0 < time.monotonic() - t0 < 15
        wait_back_to(p, threads0, fds0, within=10)
        with Client(proc.address, secret=secret, timeout=10) as c:
            assert c.call("add", 1, 2) == 3
        for chan in chans:
            chan.close()


def test_errors_to_the_peer_carry_type_and_message_only(tmp_path):
    with (
        echo_server(tmp_path) as (proc, secret),
        Client(proc.address, secret=secret, timeout=10) as c,
    ):
        with pytest.raises(RemoteError) as info:
            c.call("fail", "the reason")
        with pytest.raises(RemoteError) as info2:
            c.call("add", 1, "x")  # a TypeError from inside the method
    for e in (info.value, info2.value):
        assert e.remote_traceback == "", e.remote_traceback
        assert "Traceback" not in str(e) and ".py" not in str(e), str(e)
    assert (info.value.remote_type, info.value.remote_message) == ("ValueError", "the reason")
    assert info2.value.remote_type == "TypeError"
    assert "demo.py" in proc.log_text()  # the traceback is in the server's log


def test_errors_carry_the_traceback_with_debug_errors(tmp_path):
    with (
        echo_server(tmp_path, "--debug-errors") as (proc, secret),
        Client(proc.address, secret=secret, timeout=10) as c,
        pytest.raises(RemoteError) as info,
    ):
        c.call("fail", "the reason")
    assert "demo.py" in info.value.remote_traceback and "in fail" in info.value.remote_traceback
