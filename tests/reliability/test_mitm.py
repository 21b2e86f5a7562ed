"""A man in the middle on the bytes (a relay between a real client and a real
`rpc.py serve-echo` process, loopback only): after the handshake it flips,
drops, replays, reorders or injects one sealed record, in either direction.
Every such call fails with a clear RPC error, never with a wrong answer, and
the server keeps serving.  A known array sent through the relay never appears
in the relayed bytes (and does appear when both sides run --no-encryption: the
check can fail).  Flipping the encryption flag in the hellos fails the handshake.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from rpc_procs import Relay, echo_server

from distributed_ondisk.errors import AuthenticationError, RPCError
from distributed_ondisk.rpc import Client
from distributed_ondisk.rpc.auth import FLAG_ENCRYPT

pytestmark = [pytest.mark.integration]
# 3 MB: several 512 KiB records each way, so records in the middle of a message exist
ARRAY = (np.arange(750_000, dtype=np.float32) * 0.25 + 1.5).reshape(-1, 50)
TARGET = 3  # the record tampered with (0, 1, 2 pass untouched)


def flip(rec: bytes) -> list[bytes]:
    b = bytearray(rec)
    b[len(b) // 2] ^= 0x40
    return [bytes(b)]


def make_tamper(direction: str, action: str):
    held: list[bytes] = []

    def tamper(d: str, n: int, rec: bytes) -> list[bytes]:
        if d != direction:
            return [rec]
        if action == "flip" and n == TARGET:
            return flip(rec)
        if action == "drop" and n == TARGET:
            return []
        if action == "replay" and n == TARGET:
            return [rec, rec]
        if action == "inject" and n == TARGET:
            junk = os.urandom(1000)
            return [struct.pack("<I", len(junk)) + junk, rec]
        if action == "reorder" and n == TARGET:
            held.append(rec)
            return []
        if action == "reorder" and n == TARGET + 1:
            return [rec, *held]
        return [rec]

    return tamper


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    with echo_server(tmp_path_factory.mktemp("mitm")) as (proc, secret):
        yield proc, secret


def check_serving(proc, secret) -> None:
    assert proc.proc.poll() is None
    with Client(proc.address, secret=secret, timeout=30) as c:
        np.testing.assert_array_equal(c.call("echo", ARRAY), ARRAY)


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
@pytest.mark.parametrize("action", ["flip", "drop", "replay", "inject", "reorder"])
def test_tampered_record_fails_the_call_never_a_wrong_answer(echo, direction, action):
    proc, secret = echo
    relay = Relay(proc.address, make_tamper(direction, action))
    try:
        with Client(relay.address, secret=secret, timeout=15) as c, pytest.raises(RPCError) as info:
            out = c.call("echo", ARRAY)
            # reaching here means a wrong or right answer came through: both are failures
            pytest.fail(
                f"{action} {direction}: the call returned "
                f"{'the right' if np.array_equal(out, ARRAY) else 'a WRONG'} "
                f"answer through a tampered stream"
            )
        msg = str(info.value)
        assert "integrity check" in msg, (action, direction, msg)
    finally:
        relay.close()
    check_serving(proc, secret)


def test_untampered_relay_works_and_never_shows_the_array(echo):
    proc, secret = echo
    relay = Relay(proc.address, lambda d, n, rec: [rec])
    try:
        with Client(relay.address, secret=secret, timeout=30) as c:
            np.testing.assert_array_equal(c.call("echo", ARRAY), ARRAY)
            assert c.call("summarize", ARRAY).shape == ARRAY.shape
    finally:
        relay.close()
    window = ARRAY.tobytes()[40_000:40_064]
    assert len(relay.seen) > 2 * ARRAY.nbytes
    assert window not in relay.seen, "plaintext array bytes crossed the wire"


def test_control_without_encryption_the_array_is_visible(tmp_path):
    """The same relay with --no-encryption on both sides sees the array: the check above
    is a real check."""
    with echo_server(tmp_path, "--no-encryption") as (proc, secret):
        relay = Relay(proc.address, None)
        try:
            with Client(relay.address, secret=secret, timeout=30, encrypt=False) as c:
                np.testing.assert_array_equal(c.call("echo", ARRAY), ARRAY)
        finally:
            relay.close()
    assert ARRAY.tobytes()[40_000:40_064] in relay.seen


@pytest.mark.parametrize("direction", ["c2s", "s2c", "both"])
def test_downgrading_the_encryption_flag_fails_the_handshake(echo, direction):
    proc, secret = echo

    def strip(d: str, hello: bytes) -> bytes:
        if direction not in (d, "both"):
            return hello
        b = bytearray(hello)
        b[5] &= ~FLAG_ENCRYPT & 0xFF
        return bytes(b)

    for encrypt in (None, False):
        relay = Relay(proc.address, lambda d, n, rec: [rec], tamper_handshake=strip)
        try:
            with pytest.raises((AuthenticationError, RPCError)):
                Client(
                    relay.address, secret=secret, timeout=10, connect_timeout=10, encrypt=encrypt
                ).call("ping")
        finally:
            relay.close()
    check_serving(proc, secret)
