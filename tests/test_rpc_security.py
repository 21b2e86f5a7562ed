"""RPC security: authentication, the codec refusing pickles, hostile frames, secret handling."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pickle
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributed_ondisk.errors import (
    AuthenticationError,
    ConnectionLost,
    ForbiddenError,
    InputError,
    ProtocolError,
    RemoteError,
)
from distributed_ondisk.rpc import (
    Client,
    Server,
    add_secret_args,
    auth,
    codec,
    framing,
    generate_secret,
    load_secret,
    parse_address,
    secret_from_args,
    write_secret_file,
)
from distributed_ondisk.rpc.demo import EchoService


class Reduce:
    """Pickles as ``fn(*args)`` (plus optional BUILD state): how hostile pickles are made."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def authed_socket(address: str, secret: bytes) -> socket.socket:
    sock = socket.create_connection(parse_address(address), timeout=10)
    return auth.client_handshake(sock, secret, address)  # the (encrypted) channel


def frame(payload: bytes, *, kind=framing.KIND_REQUEST, rid=1, body_len=None, nbuf=0) -> bytes:
    body = payload
    head = framing.HEADER.pack(
        framing.MAGIC,
        framing.VERSION,
        kind,
        0,
        rid,
        len(payload),
        nbuf,
        0,
        len(body) if body_len is None else body_len,
    )
    return head + body


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def assert_still_serving(server, secret):
    with Client(server.address, secret=secret, timeout=10) as c:
        assert c.call("add", 20, 22) == 42


# -- authentication ------------------------------------------------------------
def test_wrong_or_missing_secret_both_directions(server, secret, caplog):
    caplog.set_level(logging.WARNING, logger="distributed_ondisk.rpc.server")
    with pytest.raises(AuthenticationError, match="rejected our shared secret"):
        Client(server.address, secret=generate_secret())
    with pytest.raises(AuthenticationError, match="requires a shared secret"):
        Client(server.address, secret=None)
    with Server(EchoService(), secret=None, allow_insecure_loopback=True) as insecure:
        with pytest.raises(AuthenticationError, match="without authentication"):
            Client(insecure.address, secret=secret)
        with Client(insecure.address, secret=None) as c:
            assert c.call("add", 1, 2) == 3
    assert_still_serving(server, secret)
    assert any(
        "127.0.0.1:" in r.getMessage() and "wrong shared secret" in r.getMessage()
        for r in caplog.records
    )


def test_insecure_server_only_on_request_and_only_on_loopback():
    with pytest.raises(InputError, match="without a shared secret"):
        Server(EchoService(), secret=None)
    for host in ["0.0.0.0", "::"]:
        with pytest.raises(InputError, match="not a loopback"):
            Server(EchoService(), host=host, secret=None, allow_insecure_loopback=True)


def test_client_rejects_server_that_cannot_prove_the_secret(secret):
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def impostor():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(
                auth.HELLO.pack(
                    auth.HELLO_MAGIC, auth.HELLO_VERSION, auth.FLAG_AUTH, os.urandom(32)
                )
            )
            conn.recv(auth.HELLO.size)
            conn.recv(auth.PROOF_LEN)
            conn.sendall(b"\x01" + os.urandom(auth.PROOF_LEN))  # claims success, bad proof
            conn.recv(10)

    t = threading.Thread(target=impostor)
    t.start()
    with pytest.raises(AuthenticationError, match="failed to prove"):
        Client(address, secret=secret)
    t.join(5)
    listener.close()


def test_nothing_is_unpickled_before_authentication(server, secret, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(("echo", (Reduce(os.system, f"touch {marker}"),), {}))
    sock = socket.create_connection(parse_address(server.address), timeout=10)
    sock.sendall(
        auth.HELLO.pack(auth.HELLO_MAGIC, auth.HELLO_VERSION, auth.FLAG_AUTH, os.urandom(32))
    )
    sock.sendall(frame(payload))  # a frame where the proof should be
    reply = read_until_closed(sock)
    assert reply[auth.HELLO.size :] == b"\x00" * (1 + auth.PROOF_LEN)  # the refusal, nothing more
    assert not marker.exists()
    assert_still_serving(server, secret)


# -- restricted unpickling -----------------------------------------------------
def _hostile_payloads(marker: Path, tmp_path: Path) -> dict[str, object]:
    npy = tmp_path / "evil.npy"
    np.save(npy, np.array([Reduce(os.system, f"touch {marker}")], dtype=object), allow_pickle=True)
    return {
        "os.system": Reduce(os.system, f"touch {marker}"),
        "subprocess": Reduce(subprocess.check_call, ["touch", str(marker)]),
        "eval": Reduce(eval, f"open({str(marker)!r}, 'w').close()"),
        "exec": Reduce(exec, f"open({str(marker)!r}, 'w').close()"),
        "getattr": Reduce(getattr, Reduce(__import__, "os"), "system"),
        "numpy.load": Reduce(np.load, str(npy), None, True),
        "functools.partial": functools.partial(os.system, f"touch {marker}"),
        "object array of ints": np.array([1, "a"], dtype=object),
        "object array with payload": np.array([Reduce(os.system, f"touch {marker}")], dtype=object),
        "dtype forged object flags": Reduce(
            np.dtype, "f8", False, True, state=(3, "<", None, None, None, -1, -1, 63)
        ),
        "dtype field beyond itemsize": Reduce(
            np.dtype,
            "V4",
            False,
            True,
            state=(3, "|", None, ("a",), {"a": (np.dtype("f8"), 100)}, 4, 1, 0),
        ),
        "dtype subarray beyond itemsize": Reduce(
            np.dtype,
            "V4",
            False,
            True,
            state=(3, "|", (np.dtype("f8"), (1000,)), None, None, 4, 1, 0),
        ),
        "BUILD on a builtin": Reduce(complex, 1.0, 2.0, state={"real": 5}),
    }


PAYLOAD_NAMES = sorted(_hostile_payloads(Path("/nonexistent"), Path("/tmp")))


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_hostile_pickle_refused_and_server_keeps_serving(server, secret, tmp_path, name, caplog):
    caplog.set_level(logging.WARNING, logger="distributed_ondisk.rpc.server")
    marker = tmp_path / "pwned"
    obj = _hostile_payloads(marker, tmp_path)[name]
    payload = pickle.dumps(("echo", (obj,), {}), protocol=5)
    sock = authed_socket(server.address, secret)
    sock.sendall(frame(payload, rid=9))
    reply = read_until_closed(sock)
    kind = framing.HEADER.unpack_from(reply)[2]
    assert kind == framing.KIND_FATAL
    assert not marker.exists()
    assert_still_serving(server, secret)
    assert any("refused a message from 127.0.0.1:" in r.getMessage() for r in caplog.records)


def test_pickles_are_not_decoded_at_all(server, secret):
    # The codec is not pickle: even a harmless pickle is a malformed message.
    sock = authed_socket(server.address, secret)
    sock.sendall(frame(pickle.dumps(("add", (1, 2), {}), protocol=5)))
    kind, _, reply = framing.recv_message(sock)
    sock.close()
    assert kind == framing.KIND_FATAL and "not an RPC codec message" in reply[1]
    assert np.dtype("f8").byteorder == "=" and np.dtype(np.float64).isnative
    assert_still_serving(server, secret)


def test_client_refuses_hostile_reply(secret, tmp_path):
    marker = tmp_path / "pwned"
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def evil_server():
        conn, _ = listener.accept()
        with conn:
            conn = auth.server_handshake(conn, secret, "client")  # the (encrypted) channel
            framing.recv_message(conn)
            data, _ = codec.dumps(np.zeros(2, np.float64))
            conn.sendall(frame(data.replace(b"<f8", b"|O8"), kind=framing.KIND_REPLY, rid=1))
            conn.recv(10)

    t = threading.Thread(target=evil_server)
    t.start()
    with (
        Client(address, secret=secret) as c,
        pytest.raises(ForbiddenError, match="object arrays are not accepted"),
    ):
        c.call("echo", 1)
    t.join(5)
    listener.close()
    assert not marker.exists()


# -- hostile frames ------------------------------------------------------------
def test_frame_claiming_a_terabyte_is_refused_without_allocating(server, secret):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sock = authed_socket(server.address, secret)
    t0 = time.monotonic()
    sock.sendall(frame(b"", body_len=1 << 40))
    read_until_closed(sock)
    assert time.monotonic() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert_still_serving(server, secret)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame(b"", body_len=1 << 40))
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            framing.recv_message(b)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # connect, authenticate, close
        frame(b"x" * 20)[:10],  # half a header
        frame(pickle.dumps(("add", (1, 2), {})))[:-3],  # body cut short
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # wrong protocol
        frame(b"", nbuf=framing.MAX_BUFFERS + 1, body_len=10),  # absurd buffer count
        frame(b"abc", body_len=2),  # pickle longer than the body
        frame(pickle.dumps(("add", (1, 2), {})), kind=77),  # unknown kind
        frame(pickle.dumps(["add", (1, 2), {}])),  # not a request tuple
        frame(b"\x80\x05garbage."),  # malformed pickle
    ],
)
def test_malformed_frames_close_connection_only(server, secret, data):
    sock = authed_socket(server.address, secret)
    sock.sendall(data)
    try:
        sock.shutdown(socket.SHUT_WR)  # the peer goes away (mid-frame for truncated ones)
    except OSError:
        pass  # the server already refused and closed
    read_until_closed(sock)
    assert_still_serving(server, secret)


def test_random_bytes_before_handshake(server, secret):
    sock = socket.create_connection(parse_address(server.address), timeout=10)
    sock.sendall(os.urandom(4096))
    read_until_closed(sock)
    assert_still_serving(server, secret)


def test_client_message_limit(server, secret):
    with Client(server.address, secret=secret, max_message_bytes=1000) as c:
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            c.call("make_array", 10_000)
        assert c.call("add", 1, 2) == 3  # reconnected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_recv_message_raises_only_rpc_errors(data):
    a, b = socket.socketpair()
    with a, b:
        header = framing.HEADER.pack(
            framing.MAGIC,
            framing.VERSION,
            framing.KIND_REQUEST,
            0,
            1,
            len(data) // 2,
            0,
            0,
            len(data),
        )
        for raw in (data, header + data):
            a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        for _ in range(2):
            try:
                framing.recv_message(b, max_bytes=1 << 20)
            except (ProtocolError, ForbiddenError, ConnectionLost):
                break


_GOOD = codec.dumps(("add", (np.arange(3), {"k": [1.5, "s"]}), {}), inband_below=1 << 20)[0]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_fuzz_mutated_requests_against_live_server(server, secret, mutations):
    payload = bytearray(_GOOD)
    for pos, value in mutations:
        payload[pos] = value
    sock = authed_socket(server.address, secret)
    sock.sendall(frame(bytes(payload)))
    sock.settimeout(5)
    try:
        head = sock.recv(framing.HEADER.size)
        if head:
            assert framing.HEADER.unpack_from(head.ljust(framing.HEADER.size, b"\0"))[2] in (
                framing.KIND_REPLY,
                framing.KIND_ERROR,
                framing.KIND_FATAL,
            )
    except (TimeoutError, ConnectionResetError):
        pass  # waiting for more bytes the mutated header promised, or closed: both fine
    sock.close()
    assert_still_serving(server, secret)


# -- secrets ------------------------------------------------------------------
def test_secret_file_modes_and_keygen(tmp_path):
    path = tmp_path / "key"
    secret = write_secret_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600 and load_secret(path) == secret
    with pytest.raises(InputError, match="already exists"):
        write_secret_file(path)
    assert write_secret_file(path, force=True) != secret
    path.chmod(0o640)
    with pytest.raises(InputError, match="chmod 600"):
        load_secret(path)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    with pytest.raises(InputError, match="at least"):
        load_secret(short)
    with pytest.raises(InputError, match="cannot open"):
        load_secret(tmp_path / "missing")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_secret_from_environment_and_args(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTRIBUTED_ONDISK_SECRET", raising=False)
    monkeypatch.delenv("DISTRIBUTED_ONDISK_SECRET_FILE", raising=False)
    parser = argparse.ArgumentParser()
    add_secret_args(parser)
    assert load_secret() is None
    with pytest.raises(InputError, match="no shared secret"):
        secret_from_args(parser.parse_args([]))
    assert secret_from_args(parser.parse_args(["--insecure"])) is None
    key = tmp_path / "key"
    secret = write_secret_file(key)
    with pytest.raises(InputError, match="contradict"):
        secret_from_args(parser.parse_args(["--insecure", "--secret-file", str(key)]))
    assert secret_from_args(parser.parse_args(["--secret-file", str(key)])) == secret
    monkeypatch.setenv("DISTRIBUTED_ONDISK_SECRET_FILE", str(key))
    assert secret_from_args(parser.parse_args([])) == secret
    monkeypatch.setenv("DISTRIBUTED_ONDISK_SECRET", "a-literal-secret-long-enough")
    with pytest.raises(InputError, match="only one"):
        load_secret()
    monkeypatch.delenv("DISTRIBUTED_ONDISK_SECRET_FILE")
    assert load_secret() == b"a-literal-secret-long-enough"


def test_remote_forbidden_error_type(server, secret):
    with Client(server.address, secret=secret) as c:
        with pytest.raises(RemoteError) as info:
            c.call("__class__")
        assert info.value.remote_type == "distributed_ondisk.errors.ForbiddenError"
