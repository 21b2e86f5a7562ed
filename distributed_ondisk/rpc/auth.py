"""The connection handshake: mutual HMAC-SHA256 challenge-response, before any pickle.

Both sides send a fixed-size hello (magic, version, whether they use a secret,
32 random bytes of nonce).  With a secret, the client then proves knowledge of it
with HMAC(secret, label | "client" | client nonce | server nonce); only if that
checks out does the server answer with its own proof under the "server" role.
Binding both nonces and the role defeats replay and reflection; the server
proves itself second so that an unauthenticated peer learns nothing.  Both
sides must agree on whether a secret is used, else the handshake fails with an
AuthenticationError that says which side lacks one.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from typing import Optional

from distributed_ondisk.errors import AuthenticationError, ProtocolError
from distributed_ondisk.rpc.framing import _recv_into, _wait

HELLO = struct.Struct("<4sBB2x32s")
HELLO_MAGIC = b"DOHS"
HELLO_VERSION = 1
FLAG_AUTH = 1
LABEL = b"distributed_ondisk-rpc-v1"
PROOF_LEN = 32
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def _proof(secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(secret, LABEL + b"|" + role + b"|" + client_nonce + server_nonce,
                    hashlib.sha256).digest()


def _exchange_hello(sock: socket.socket, secret: Optional[bytes], deadline: float,
                    peer: str) -> tuple[bytes, bytes, bool]:
    nonce = os.urandom(32)
    _wait(sock, deadline)
    sock.sendall(HELLO.pack(HELLO_MAGIC, HELLO_VERSION, FLAG_AUTH if secret else 0, nonce))
    buf = bytearray(HELLO.size)
    _recv_into(sock, memoryview(buf), deadline)
    magic, version, flags, peer_nonce = HELLO.unpack(buf)
    if magic != HELLO_MAGIC:
        raise ProtocolError(f"{peer} does not speak distributed_ondisk RPC (bad hello)")
    if version != HELLO_VERSION:
        raise ProtocolError(f"{peer} speaks handshake version {version}, we speak "
                            f"{HELLO_VERSION}")
    return nonce, peer_nonce, bool(flags & FLAG_AUTH)


def client_handshake(sock: socket.socket, secret: Optional[bytes], peer: str,
                     timeout: float = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    client_nonce, server_nonce, server_auth = _exchange_hello(sock, secret, deadline, peer)
    if server_auth and not secret:
        raise AuthenticationError(f"server {peer} requires a shared secret and we have none "
                                  f"(pass --secret-file or set DISTRIBUTED_ONDISK_SECRET_FILE)")
    if secret and not server_auth:
        raise AuthenticationError(f"server {peer} runs without authentication but we have a "
                                  f"shared secret; refusing to talk to an unauthenticated server")
    if not secret:
        return
    _wait(sock, deadline)
    sock.sendall(_proof(secret, b"client", client_nonce, server_nonce))
    answer = bytearray(1 + PROOF_LEN)
    _recv_into(sock, memoryview(answer), deadline)
    if answer[0] != 1:
        raise AuthenticationError(f"server {peer} rejected our shared secret (different "
                                  f"secret on the two sides?)")
    expected = _proof(secret, b"server", client_nonce, server_nonce)
    if not hmac.compare_digest(bytes(answer[1:]), expected):
        raise AuthenticationError(f"server {peer} failed to prove it knows the shared secret")


def server_handshake(sock: socket.socket, secret: Optional[bytes], peer: str,
                     timeout: float = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    server_nonce, client_nonce, client_auth = _exchange_hello(sock, secret, deadline, peer)
    if bool(secret) != client_auth:
        raise AuthenticationError(
            f"client {peer} " + ("sent no shared secret" if secret else
                                 "expects a shared secret but this server runs without one"))
    if not secret:
        return
    proof = bytearray(PROOF_LEN)
    _recv_into(sock, memoryview(proof), deadline)
    if not hmac.compare_digest(bytes(proof), _proof(secret, b"client", client_nonce,
                                                    server_nonce)):
        _wait(sock, deadline)
        sock.sendall(b"\x00" * (1 + PROOF_LEN))
        raise AuthenticationError(f"client {peer} failed authentication (wrong shared secret)")
    _wait(sock, deadline)
    sock.sendall(b"\x01" + _proof(secret, b"server", client_nonce, server_nonce))
