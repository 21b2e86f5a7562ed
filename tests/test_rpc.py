"""RPC behaviour: framing round trips, calls, errors, timeouts, concurrency, CLI, shutdown."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.errors import (
    AuthenticationError,
    ConnectionLost,
    ForbiddenError,
    InputError,
    RemoteError,
    RPCTimeout,
)
from distributed_ondisk.rpc import (
    Client,
    Server,
    framing,
    parse_address,
    register_message_type,
    wait_ready,
)
from distributed_ondisk.rpc.demo import EchoService, Summary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(server, secret):
    with Client(server.address, secret=secret, timeout=30) as c:
        yield c


def roundtrip(obj):
    """Send obj through a socketpair with the real framing (sender in a thread)."""
    a, b = socket.socketpair()
    try:
        sender = threading.Thread(target=framing.send_message, args=(a, framing.KIND_REPLY, 7, obj))
        sender.start()
        kind, rid, out = framing.recv_message(b)
        sender.join()
        assert (kind, rid) == (framing.KIND_REPLY, 7)
        return out
    finally:
        a.close()
        b.close()


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, d)) * 5
    return (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


ARRAYS = {
    "f4 2d": _clustered(100, 16),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 5), dtype=np.float32),
    "non-contiguous": _clustered(50, 16)[::3, 1::2],
    "fortran": np.asfortranarray(_clustered(20, 7)),
    "big-endian": np.arange(10, dtype=">f4"),
    "structured": np.array([(1, 2.0), (3, 4.0)], dtype=[("id", "<i8"), ("d", "<f4")]),
    "subarray": np.zeros(3, dtype=("f4", (2,))),
    "bool": np.array([True, False]),
    "unicode": np.array(["ab", "c"]),
    "bytes": np.array([b"ab", b"c"]),
    "datetime": np.array(["2020-01-01", "2021-06-01"], dtype="M8[D]"),
    "timedelta": np.arange(3, dtype="m8[s]"),
    "big 40MB": np.arange(10_000_000, dtype=np.float32),
}
for _dt in ["f2", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "c8", "c16"]:
    ARRAYS[_dt] = (np.arange(24) % 7).astype(_dt).reshape(2, 3, 4)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_framing_roundtrip_arrays(name):
    x = ARRAYS[name]
    y = roundtrip(x)
    assert type(y) is np.ndarray and y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    assert y.flags.writeable


def test_framing_roundtrip_containers_and_scalars():
    obj = {
        "a": [1, 2.5, 3 + 4j, None, True, "é", b"\x00", bytearray(b"xy")],
        ("t", 1): (frozenset({1, 2}), {3, 4}, slice(1, 9, 2), range(2, 10, 3)),
        "np": [
            np.float32(1.5),
            np.int64(-3),
            np.bool_(True),
            np.dtype("f4"),
            np.float32,
            type(np.dtype("i8")),
        ],
        "nested": [[{"x": np.arange(5)}]] * 3,
        "summary": Summary((4,), "<i8", 1.5, np.arange(3)),
    }
    out = roundtrip(obj)
    assert out.keys() == obj.keys()
    assert out["a"] == obj["a"] and out[("t", 1)] == obj[("t", 1)]
    assert out["np"] == obj["np"] and type(out["np"][0]) is np.float32
    np.testing.assert_array_equal(out["nested"][2][0]["x"], np.arange(5))
    assert out["summary"].dtype == "<i8" and list(out["summary"].head) == [0, 1, 2]


def test_calls_results_and_proxy(client):
    x = _clustered(1000, 32)
    np.testing.assert_array_equal(client.call("echo", x), x)
    assert client.call("add", a=2, b=3) == 5
    assert client.proxy().add(np.int32(1), 2) == 3
    assert client.call("nbytes", x) == x.nbytes
    assert client.call("ping")["pid"] == os.getpid()
    assert client.methods() == sorted(EchoService.RPC_METHODS)
    summary = client.call("summarize", x)
    assert isinstance(summary, Summary) and summary.shape == x.shape
    np.testing.assert_array_equal(summary.head, x[:3])


@dataclasses.dataclass
class Outsider:
    x: int


def test_register_message_type_only_for_project_classes():
    with pytest.raises(ForbiddenError, match="distributed_ondisk"):
        register_message_type(Outsider)
    with pytest.raises(ForbiddenError, match="Outsider"):
        roundtrip(Outsider(1))


def test_remote_exception_carries_type_and_message_only(client, server, caplog):
    with (
        caplog.at_level("WARNING", logger="distributed_ondisk.rpc.server"),
        pytest.raises(RemoteError) as info,
    ):
        client.call("fail", "the reason")
    e = info.value
    assert e.remote_type == "ValueError" and e.remote_message == "the reason"
    assert e.remote_traceback == ""  # no paths or source lines leave the server
    assert "in fail" in caplog.text and "demo.py" in caplog.text  # they are in its log
    assert e.server == server.address and server.address in str(e)
    assert client.call("add", 1, 1) == 2  # connection still usable


def test_remote_traceback_only_with_debug_errors(secret):
    with (
        Server(EchoService(), secret=secret, debug_errors=True) as srv,
        Client(srv.address, secret=secret) as c,
        pytest.raises(RemoteError) as info,
    ):
        c.call("fail", "the reason")
    tb = info.value.remote_traceback
    assert "in fail" in tb and "ValueError: the reason" in tb


def test_encrypted_by_default_and_plaintext_only_on_both_sides(secret):
    big = np.random.default_rng(1).random(3_000_000, dtype=np.float32)  # many records
    with Server(EchoService(), secret=secret) as srv:
        assert srv.encrypt
        with Client(srv.address, secret=secret) as c:
            assert c._chan.encrypted
            np.testing.assert_array_equal(c.call("echo", big), big)
            assert c.call("echo", [big[:10], "x"])[1] == "x"
        with pytest.raises(AuthenticationError, match="encrypt"):
            Client(srv.address, secret=secret, encrypt=False)
    with Server(EchoService(), secret=secret, encrypt=False) as srv:
        with Client(srv.address, secret=secret, encrypt=False) as c:
            assert not c._chan.encrypted
            np.testing.assert_array_equal(c.call("echo", big), big)
        with pytest.raises(AuthenticationError, match="without encryption"):
            Client(srv.address, secret=secret)


def test_client_reconnects_after_the_servers_idle_timeout(secret):
    with (
        Server(EchoService(), secret=secret, idle_timeout=0.3) as srv,
        Client(srv.address, secret=secret) as c,
    ):
        assert c.call("add", 1, 2) == 3
        deadline = time.monotonic() + 10
        while srv.connection_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.connection_count() == 0  # dropped as idle
        assert c.call("add", 2, 2) == 4  # a fresh connection, transparently


@pytest.mark.parametrize("method", ["_private", "__init__", "nonexistent", "sleep_"])
def test_unexposed_methods_refused(client, method):
    with pytest.raises(RemoteError) as info:
        client.call(method)
    assert info.value.remote_type.endswith("ForbiddenError")
    assert client.call("add", 1, 2) == 3


def test_private_name_in_rpc_methods_is_never_exposed(secret):
    srv = Server(EchoService(), secret=secret, methods=["echo", "_private"])
    assert srv.methods == frozenset({"echo"})
    with pytest.raises(InputError, match="no callable method"):
        Server(EchoService(), secret=secret, methods=["missing"])
    with pytest.raises(InputError, match="RPC_METHODS"):
        Server(object(), secret=secret)


def test_per_call_timeout_then_reconnect(client):
    t0 = time.monotonic()
    with pytest.raises(RPCTimeout, match="sleep"):
        client.call_with_timeout(0.3, "sleep", 1.5)
    assert time.monotonic() - t0 < 2.0
    assert client.call("add", 2, 2) == 4  # a fresh connection


def test_concurrent_clients_and_shared_client(server, secret):
    shared = Client(server.address, secret=secret)
    errors: list[BaseException] = []

    def work(seed: int, own: bool) -> None:
        try:
            c = Client(server.address, secret=secret) if own else shared
            x = _clustered(200, 8, seed)
            for i in range(20):
                np.testing.assert_array_equal(c.call("add", x, np.float32(i)), x + np.float32(i))
            if own:
                c.close()
        except BaseException as e:  # noqa: BLE001 -- surfaced below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, i % 2 == 0)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert not errors, errors


def test_idle_connection_does_not_block_and_is_dropped(secret):
    with Server(EchoService(), secret=secret, handshake_timeout=0.5) as srv:
        host, port = parse_address(srv.address)
        idle = socket.create_connection((host, port))
        with Client(srv.address, secret=secret) as c:
            assert c.call("add", 1, 2) == 3
        idle.settimeout(5)
        t0 = time.monotonic()
        data = idle.recv(1024)  # the server's hello, then EOF when it drops us
        while data:
            data = idle.recv(1024)
        assert time.monotonic() - t0 < 3.0
        idle.close()


@pytest.mark.slow
def test_many_dropped_connections_leak_nothing(secret):
    psutil = pytest.importorskip("psutil", reason="psutil counts open file descriptors")
    proc = psutil.Process()
    with Server(EchoService(), secret=secret, handshake_timeout=2.0) as srv:
        host, port = parse_address(srv.address)
        with Client(srv.address, secret=secret) as c:
            c.call("ping")
        fds0, threads0 = proc.num_fds(), threading.active_count()
        # From another process, so the churn does not compete with the server for our GIL.
        churn = (
            "import socket, sys\n"
            "for i in range(1000):\n"
            "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
            "    if i % 3 == 0:\n"
            "        s.sendall(b'DOHS')  # a partial hello\n"
            "    s.close()\n"
        )
        subprocess.run([sys.executable, "-c", churn, host, str(port)], check=True, timeout=120)
        deadline = time.monotonic() + 20
        while srv.connection_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.connection_count() == 0
        with Client(srv.address, secret=secret) as c:
            assert c.call("add", 1, 1) == 2
        time.sleep(0.2)
        assert threading.active_count() <= threads0 + 1
        assert proc.num_fds() <= fds0 + 2


def test_parse_address_and_ipv6(secret):
    assert parse_address("10.0.0.1:80") == ("10.0.0.1", 80)
    assert parse_address("[::1]:1234") == ("::1", 1234)
    assert parse_address("node-3.cluster:5") == ("node-3.cluster", 5)
    for bad in ["nohost", "::1:1234", "h:port", "h:70000", "[::1]1234", ":12"]:
        with pytest.raises(InputError):
            parse_address(bad)
    try:
        srv = Server(EchoService(), host="::1", secret=secret).start()
    except (OSError, ConnectionLost) as e:
        pytest.skip(f"no IPv6 loopback on this machine: {e}")
    try:
        assert srv.address.startswith("[::1]:")
        wait_ready(srv.address, secret=secret, timeout=10)
        with Client(srv.address, secret=secret) as c:
            assert c.call("add", 2, 5) == 7
    finally:
        srv.shutdown()


def test_wait_ready_times_out_on_closed_port(secret):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(RPCTimeout, match="no server answered"):
        wait_ready(f"127.0.0.1:{port}", secret=secret, timeout=0.5)
    assert time.monotonic() - t0 < 3


# -- subprocesses: the CLI and signals -----------------------------------------
def _start_echo(tmp_path: Path, secret_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "rpc.py"), "serve-echo", "--secret-file", str(secret_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    address = proc.stdout.readline().strip()
    assert address, proc.stderr.read()
    return proc, address


def _rpc_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "rpc.py"), *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.integration
def test_cli_keygen_ping_methods_and_sigterm_graceful(tmp_path):
    key = tmp_path / "secret"
    assert _rpc_cli("keygen", str(key)).returncode == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    again = _rpc_cli("keygen", str(key))
    assert again.returncode == 2 and "already exists" in again.stderr

    proc, address = _start_echo(tmp_path, key)
    try:
        ping = _rpc_cli("ping", address, "--timeout", "30", "--secret-file", str(key))
        assert ping.returncode == 0, ping.stderr
        methods = _rpc_cli("methods", address, "--secret-file", str(key))
        assert methods.stdout.split() == sorted(EchoService.RPC_METHODS)
        bad = _rpc_cli("ping", address, "--timeout", "5", "--insecure")
        assert bad.returncode == 2 and "requires a shared secret" in bad.stderr

        secret = key.read_bytes().strip()
        result: list = []
        with Client(address, secret=secret) as c:
            caller = threading.Thread(target=lambda: result.append(c.call("sleep", 1.0)))
            caller.start()
            time.sleep(0.3)  # let the call get in flight before the signal
            proc.send_signal(signal.SIGTERM)
            caller.join(10)
        assert result == [1.0]  # the in-flight call finished and replied
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    closed = _rpc_cli("ping", address, "--timeout", "0.5", "--secret-file", str(key))
    assert closed.returncode == 2 and "no server answered" in closed.stderr


def _secure_pair():
    """Two ends of a sealed channel over a socketpair, plus the raw sockets."""
    from distributed_ondisk.rpc.session import SecureChannel

    a, b = socket.socketpair()
    k1, k2 = os.urandom(32), os.urandom(32)
    return SecureChannel(a, "a", k1, k2), SecureChannel(b, "b", k2, k1), a, b


def _sealed(obj) -> tuple:
    """The receiving channel (re-pointed at a fresh socket) and the raw sealed bytes of
    one message, so a test can alter them before the receiver sees them."""
    ca, cb, a, b = _secure_pair()
    framing.send_message(ca, framing.KIND_REPLY, 1, obj)
    b.settimeout(5)
    raw = b.recv(1 << 20)
    a.close()
    b.close()
    feed, cb.sock = socket.socketpair()
    return cb, feed, raw


def test_sealed_records_round_trip_big_arrays():
    ca, cb, a, b = _secure_pair()
    x = np.random.default_rng(2).random(400_000, dtype=np.float32)  # 1.6 MB: 4 records
    with a, b:
        t = threading.Thread(target=framing.send_message, args=(ca, framing.KIND_REPLY, 3, x))
        t.start()
        kind, rid, y = framing.recv_message(cb, deadline=time.monotonic() + 30)
        t.join()
    assert (kind, rid) == (framing.KIND_REPLY, 3)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("how", ["replay", "flip", "truncate-length", "swap-order"])
def test_sealed_records_refuse_tampering(how):
    from distributed_ondisk.errors import ProtocolError

    cb, feed, rec = _sealed("hello")
    with feed, cb.sock:
        if how == "replay":
            feed.sendall(rec + rec)
            assert framing.recv_message(cb, deadline=time.monotonic() + 5)[2] == "hello"
        elif how == "flip":
            bad = bytearray(rec)
            bad[-3] ^= 1
            feed.sendall(bytes(bad))
        elif how == "truncate-length":  # the length is authenticated too
            feed.sendall(struct.pack("<I", len(rec) - 5) + rec[4:-1])
        else:  # a record of another message (counter 0 again) after counter 1 is expected
            feed.sendall(rec)
            framing.recv_message(cb, deadline=time.monotonic() + 5)
            cb2, feed2, rec2 = _sealed("other")
            feed2.close()
            cb2.sock.close()
            feed.sendall(rec2)
        with pytest.raises(ProtocolError, match="integrity check"):
            framing.recv_message(cb, deadline=time.monotonic() + 5)


def test_sealed_channel_closes_instead_of_reusing_a_nonce():
    from distributed_ondisk.rpc import session

    ca, _cb, a, b = _secure_pair()
    with a, b:
        ca._send_count = session.MAX_RECORDS
        with pytest.raises(ConnectionLost, match="records with one key"):
            framing.send_message(ca, framing.KIND_REPLY, 1, "x")


def test_session_keys_differ_per_connection_and_direction():
    from distributed_ondisk.rpc.session import derive_keys

    s = b"s" * 32
    c2s, s2c = derive_keys(s, b"a" * 32, b"b" * 32, b"transcript")
    assert c2s != s2c and len(c2s) == len(s2c) == 32
    assert derive_keys(s, b"a" * 32, b"c" * 32, b"transcript") != (c2s, s2c)
    assert derive_keys(s, b"a" * 32, b"b" * 32, b"transcripT") != (c2s, s2c)
