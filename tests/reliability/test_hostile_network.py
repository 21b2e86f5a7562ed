"""Hostile network input to every server the toolkit opens, as real processes:
the k-means server (distributed_kmeans.py --server) and the search server
(search_server.py).  Unauthenticated peers, wrong secrets, random bytes (fuzzed
with hypothesis), frames with huge lengths, malicious pickles sent *with the
right secret* (so the restricted unpickler is what stops them), slow senders,
thousands of connections opened and dropped.  After every case the server is
up, answers a real client, its RSS stays bounded and no payload marker exists.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import kmeans_server, search_server

from distributed_ondisk.errors import AuthenticationError
from distributed_ondisk.rpc import Client, framing, generate_secret
from distributed_ondisk.rpc.address import parse_address
from distributed_ondisk.rpc.auth import (
    FLAG_AUTH,
    HELLO,
    HELLO_MAGIC,
    HELLO_VERSION,
    client_handshake,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RSS_SLACK = 96 << 20  # what a server may grow by over a whole hostile case


class Target:
    def __init__(self, kind: str, proc, secret: bytes, marker: Path) -> None:
        self.kind, self.proc, self.secret, self.marker = kind, proc, secret, marker
        self.host, self.port = parse_address(proc.address)
        self.rss0 = proc.rss()

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def authed(self):
        """The authenticated channel (sealed records): raw frames sent through it reach
        the server's parser and unpickler as a real client's would."""
        return client_handshake(self.connect(), self.secret, self.proc.address)

    def check_healthy(self) -> None:
        """Up, answering a real call, memory bounded, no marker from a payload."""
        assert self.proc.alive(), self.proc.log_tail()
        with Client(self.proc.address, secret=self.secret, timeout=30) as c:
            if self.kind == "kmeans":
                assert c.call("count") > 0 and c.call("dim") == 16
            else:
                assert c.call("info")["nlist"] == 32
        assert not self.marker.exists(), "a payload ran code in the server"
        assert self.proc.rss() - self.rss0 < RSS_SLACK, (self.proc.rss(), self.rss0)


@pytest.fixture(scope="module", params=["kmeans", "search"])
def target(request, reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"hostile_{request.param}")
    sf = reference.secret_file
    proc = (
        kmeans_server(reference.root, 0, 1, sf, tmp)
        if request.param == "kmeans"
        else search_server(reference.root, [0, 1], sf, tmp)
    )
    proc.start()
    try:
        t = Target(request.param, proc, reference.secret, tmp / "PWNED")
        t.check_healthy()
        yield t
        t.check_healthy()
    finally:
        proc.stop()


def frame(
    data: bytes,
    *,
    kind: int = framing.KIND_REQUEST,
    nbuf: int = 0,
    body_len: int | None = None,
    pickle_len: int | None = None,
) -> bytes:
    body = len(data) if body_len is None else body_len
    plen = len(data) if pickle_len is None else pickle_len
    return (
        framing.HEADER.pack(framing.MAGIC, framing.VERSION, kind, 0, 7, plen, nbuf, 0, body) + data
    )


def reply_of(s: socket.socket) -> tuple[int, object]:
    """The server's answer to a refused message: a FATAL frame, then it closes."""
    kind, _, obj = framing.recv_message(s, deadline=time.monotonic() + 20)
    return kind, obj


def closed_by_server(s: socket.socket, timeout: float = 20) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# ------------------------------------------------------------------ authentication


def test_unauthenticated_and_wrong_secret_are_refused(target):
    with pytest.raises(AuthenticationError):
        Client(target.proc.address, secret=generate_secret(), timeout=10).call("ping")
    with pytest.raises(AuthenticationError):
        Client(target.proc.address, secret=None, timeout=10).call("ping")
    # a raw peer that says hello without a secret, then sends a request anyway
    s = target.connect()
    s.sendall(HELLO.pack(HELLO_MAGIC, HELLO_VERSION, 0, os.urandom(32)))
    s.sendall(frame(pickle.dumps(("count", (), {}))))
    assert closed_by_server(s)
    s.close()
    # a peer claiming a secret but sending a forged proof
    s = target.connect()
    s.sendall(HELLO.pack(HELLO_MAGIC, HELLO_VERSION, FLAG_AUTH, os.urandom(32)))
    s.recv(HELLO.size)
    s.sendall(os.urandom(32))
    s.settimeout(10)
    assert s.recv(1) == b"\x00"
    assert closed_by_server(s)
    s.close()
    target.check_healthy()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(junk=st.binary(min_size=0, max_size=300))
def test_fuzz_random_bytes_before_the_handshake(target, junk):
    s = target.connect()
    try:
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s)
    except OSError:  # the server closed first: refused
        pass
    finally:
        s.close()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    junk=st.binary(min_size=0, max_size=2000),
    kind=st.integers(0, 255),
    nbuf=st.integers(0, 2**32 - 1),
    lens=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    use_header=st.booleans(),
)
def test_fuzz_authenticated_frames(target, junk, kind, nbuf, lens, use_header):
    """With the right secret: random headers (any kind, buffer count, lengths) and
    random bodies.  The frame parser refuses or waits, never crashes or allocates
    what the header claims."""
    s = target.authed()
    try:
        if use_header:
            s.sendall(
                framing.HEADER.pack(
                    framing.MAGIC, framing.VERSION, kind, 0, 1, lens[0], nbuf, 0, lens[1]
                )
                + junk
            )
        else:
            s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        closed_by_server(s, timeout=10)
    except OSError:  # the server closed first: refused
        pass
    finally:
        s.close()


def test_fuzz_left_the_servers_healthy(target):
    target.check_healthy()


# ------------------------------------------------------------------ huge lengths


@pytest.mark.parametrize(
    "body_len,pickle_len,nbuf",
    [
        (2**63, 10, 0),  # beyond the message limit: refused from the header alone
        (2**64 - 1, 2**64 - 1, 0),
        (100, 2**40, 0),  # pickle longer than the body
        (10, 0, 2**20),  # more buffers than allowed
        (2**31, 2**31 - 64, 0),  # under the limit: a 2 GiB pickle announced, 40 bytes sent
        (2**31, 8, 1),  # a 2 GiB out-of-band buffer announced, nothing sent
    ],
)
def test_huge_lengths_allocate_nothing_they_did_not_receive(target, body_len, pickle_len, nbuf):
    rss0 = target.proc.rss()
    s = target.authed()
    s.sendall(
        frame(b"\x80\x05" + os.urandom(38), body_len=body_len, pickle_len=pickle_len, nbuf=nbuf)
    )
    deadline = time.monotonic() + 1.5
    grown = 0
    while time.monotonic() < deadline:  # watch the server while it holds the frame
        grown = max(grown, target.proc.rss() - rss0)
        if grown > RSS_SLACK:
            break
        time.sleep(0.1)
    s.close()
    assert (
        grown < RSS_SLACK
    ), f"a header announcing {body_len} bytes made the server grow by {grown}"
    target.check_healthy()


# ------------------------------------------------------------------ malicious pickles


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path, tmp: Path) -> dict[str, bytes]:
    import builtins
    import subprocess as sp

    evil_npy = tmp / "evil.npy"
    np.save(
        evil_npy,
        np.array([_Reduce(os.system, (f"touch {marker}",))], dtype=object),
        allow_pickle=True,
    )
    cmd = f"touch {marker}"
    objs = {
        "os.system": _Reduce(os.system, (cmd,)),
        "subprocess.call": _Reduce(sp.call, (["touch", str(marker)],)),
        "subprocess.Popen": _Reduce(sp.Popen, (["touch", str(marker)],)),
        "builtins.eval": _Reduce(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": _Reduce(builtins.exec, (f"open({str(marker)!r}, 'w')",)),
        "builtins.getattr": _Reduce(
            builtins.getattr, (_Reduce(builtins.__import__, ("os",)), "system")
        ),
        "numpy.load": _Reduce(np.load, (str(evil_npy), None, True)),
        "object array": np.array([_Reduce(os.system, (cmd,))], dtype=object),
    }
    out = {}
    for name, obj in objs.items():
        out[name] = pickle.dumps(obj, protocol=5)  # as the message
        out[name + " inside a request"] = pickle.dumps(("count", (obj,), {}), protocol=5)
    # a hand-made GLOBAL + REDUCE of posix.system (what os.system pickles to)
    out["raw posix.system"] = (
        b"\x80\x02cposix\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd.encode() + b"\x85R."
    )
    return out


def test_malicious_pickles_with_the_right_secret_are_refused(target, tmp_path):
    for name, data in payloads(target.marker, tmp_path).items():
        s = target.authed()
        s.sendall(frame(data))
        try:
            kind, obj = reply_of(s)
        except Exception as e:  # noqa: BLE001 -- the server may also just close
            kind, obj = None, repr(e)
        assert kind in (framing.KIND_FATAL, None), (name, kind, obj)
        if kind == framing.KIND_FATAL:
            assert "Forbidden" in obj[0] or "Protocol" in obj[0], (name, obj)
        assert closed_by_server(s), name
        s.close()
        assert not target.marker.exists(), f"{name} ran code in the {target.kind} server"
    target.check_healthy()


# ------------------------------------------------------------------ slow senders, connection floods


def test_slow_senders_do_not_block_real_clients(target):
    """50 peers dribbling a hello one byte at a time: real clients are still served
    meanwhile, and the dribblers are dropped (handshake timeout) without a trace."""
    hello = HELLO.pack(HELLO_MAGIC, HELLO_VERSION, FLAG_AUTH, os.urandom(32))
    socks = [target.connect() for _ in range(50)]
    stop = threading.Event()

    def dribble():
        for i in range(len(hello) - 1):
            for s in socks:
                try:
                    s.send(hello[i : i + 1])
                except OSError:
                    pass
            if stop.wait(0.1):
                return

    t = threading.Thread(target=dribble)
    t.start()
    try:
        t_end = time.monotonic() + 3
        latencies = []
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            target.check_healthy()
            latencies.append(time.monotonic() - t0)
        assert max(latencies) < 5, latencies
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    target.check_healthy()


def test_thousands_of_connections_opened_and_dropped(target):
    import psutil

    p = psutil.Process(target.proc.pid)
    fds0, threads0 = p.num_fds(), p.num_threads()
    hello = HELLO.pack(HELLO_MAGIC, HELLO_VERSION, FLAG_AUTH, os.urandom(32))
    for i in range(2000):
        s = socket.create_connection((target.host, target.port), timeout=10)
        if i % 3 == 1:
            s.sendall(hello[:10])
        elif i % 3 == 2:
            s.sendall(hello)
        if i % 2:  # half of them reset (RST) instead of a clean close
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    target.check_healthy()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        p.num_fds() > fds0 + 5 or p.num_threads() > threads0 + 5
    ):
        time.sleep(0.1)  # connection threads finish as their sockets close
    assert p.num_fds() <= fds0 + 5, (p.num_fds(), fds0)
    assert p.num_threads() <= threads0 + 5, (p.num_threads(), threads0)
    target.check_healthy()


def test_no_server_accepts_a_non_loopback_start_without_secret(reference, tmp_path):
    """The servers refuse to listen beyond loopback without a secret (before any input)."""
    import sys

    from reliability_helpers import REPO, base_env

    for argv in (
        [
            "distributed_kmeans.py",
            "--server",
            "--indata",
            str(reference.root / "data.fvecs"),
            "--insecure",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        [
            "search_server.py",
            "--shards",
            str(reference.root / "hslices"),
            "--insecure",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
    ):
        env = base_env()
        env.pop("DISTRIBUTED_ONDISK_SECRET_FILE", None)
        env.pop("DISTRIBUTED_ONDISK_SECRET", None)
        r = subprocess.run(
            [sys.executable, str(REPO / argv[0]), *argv[1:]],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0 and "0.0.0.0" in r.stderr, (argv[0], r.stderr[-1000:])
