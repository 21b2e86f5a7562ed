"""Memory bombs from an authenticated peer: each refused with a clear error, the
server's memory barely grows, and it keeps serving (real `rpc.py serve-echo`)."""

from __future__ import annotations

import pickle
import socket
import struct

import numpy as np
import pytest
from rpc_procs import echo_server

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.base import check_indices
from distributed_ondisk.rpc import Client, auth, codec, framing
from distributed_ondisk.rpc.address import parse_address
from distributed_ondisk.search.server import MAX_K, check_request_size

psutil = pytest.importorskip("psutil", reason="psutil measures the server's memory")
pytestmark = pytest.mark.integration

Q = struct.Struct("<q")


def request_bytes(obj) -> bytes:
    data, buffers = codec.dumps(obj, inband_below=1 << 30)
    assert not buffers
    return data


def shape_lie() -> bytes:
    """An array whose shape claims 10^12 elements over 7777 received bytes."""
    data = request_bytes(("echo", (np.zeros(7777, np.uint8),), {}))
    assert data.count(Q.pack(7777)) == 2  # the shape and the blob length
    i = data.index(Q.pack(7777))
    return data[:i] + Q.pack(10**12) + data[i + 8 :]


def object_dtype() -> bytes:
    data = request_bytes(("echo", (np.zeros(4, np.float64),), {}))
    assert b"<f8" in data
    return data.replace(b"<f8", b"|O8")


def bytearray_pickle() -> bytes:
    # What restricted pickle used to run: bytearray(10**9), 45 bytes on the wire.
    return b"\x80\x05cbuiltins\nbytearray\nJ\x00\xca\x9a;\x85R." + pickle.dumps(None)


def many_small_objects() -> bytes:
    # ~5 wire bytes per value, ~30 bytes per decoded Python object: the budget refuses it.
    return request_bytes(("echo", ([0] * 2_000_000,), {}))


BOMBS = {
    "shape over a small buffer": shape_lie,
    "object dtype": object_dtype,
    "pickle calling bytearray": bytearray_pickle,
    "many small objects": many_small_objects,
}


def send_raw(address: str, secret: bytes, payload: bytes) -> tuple[int, object]:
    sock = socket.create_connection(parse_address(address), timeout=20)
    chan = auth.client_handshake(sock, secret, address)
    head = framing.HEADER.pack(
        framing.MAGIC, framing.VERSION, framing.KIND_REQUEST, 0, 1, len(payload), 0, 0, len(payload)
    )
    chan.sendall(head + payload)
    try:
        kind, _, reply = framing.recv_message(chan)
    finally:
        chan.close()
    return kind, reply


def test_bombs_are_refused_memory_stays_flat_server_keeps_serving(tmp_path):
    with echo_server(tmp_path) as (proc, secret):
        p = psutil.Process(proc.pid)
        rss0 = p.memory_info().rss
        for name, make in BOMBS.items():
            kind, reply = send_raw(proc.address, secret, make())
            assert kind == framing.KIND_FATAL, (name, kind, reply)
            assert reply[1], name  # a message saying why
            with Client(proc.address, secret=secret, timeout=10) as c:
                assert c.call("add", 20, 22) == 42, name
        with Client(proc.address, secret=secret, timeout=10) as c:
            with pytest.raises(Exception, match=r"make_array: n must be an integer"):
                c.call("make_array", 10**12)
            assert c.call("add", 1, 2) == 3
        assert p.memory_info().rss - rss0 < 100 << 20


def test_sizes_a_peer_states_without_sending_are_bounded():
    xt = np.zeros((10, 8), np.float32)
    check_request_size(xt, 10)
    for k in (0, -1, MAX_K + 1, 10**12, True, 2.0):
        with pytest.raises(InputError, match="k must be"):
            check_request_size(xt, k)
    with pytest.raises(InputError, match="bytes of results"):
        check_request_size(np.zeros((1_000_000, 8), np.float32), MAX_K)
    # get_subset: repeats would let 8 bytes per index materialise a whole row each
    with pytest.raises(InputError, match="indices for a view of 100 rows"):
        check_indices(np.zeros(101, np.int64), 100)
    assert len(check_indices(np.arange(100), 100)) == 100
