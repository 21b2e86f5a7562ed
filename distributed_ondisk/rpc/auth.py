"""The connection handshake: mutual HMAC-SHA256 challenge-response, before any decoding.

Both sides send a fixed-size hello (magic, version, flags: whether they use a
secret and whether they encrypt, 32 random bytes of nonce).  With a secret, the
client then proves knowledge of it with HMAC(secret, label | "client" | client
hello | server hello); only if that checks out does the server answer with its
own proof under the "server" role.  Binding both hellos (nonces and flags) and
the role defeats replay, reflection and a downgrade of the flags by a man in the
middle; the server proves itself second so that an unauthenticated peer learns
nothing.  Both sides must agree on the flags, else the handshake fails with an
AuthenticationError that says which side differs.  The session keys of
:mod:`session` are derived from the secret and the transcript.

:class:`ServerHandshake` is the server's side as a non-blocking state machine
(fed by the server's selector loop, no thread per pending peer);
:func:`server_handshake` runs it on a blocking socket.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time

from distributed_ondisk.errors import AuthenticationError, ProtocolError
from distributed_ondisk.rpc import sockio
from distributed_ondisk.rpc.session import Channel, SecureChannel, derive_keys

HELLO = struct.Struct("<4sBB2x32s")
HELLO_MAGIC = b"DOHS"
HELLO_VERSION = 2
FLAG_AUTH = 1
FLAG_ENCRYPT = 2
LABEL = b"distributed_ondisk-rpc-v2"
PROOF_LEN = 32
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def hello_flags(secret: bytes | None, encrypt: bool) -> int:
    return (FLAG_AUTH | (FLAG_ENCRYPT if encrypt else 0)) if secret else 0


def _proof(secret: bytes, role: bytes, client_hello: bytes, server_hello: bytes) -> bytes:
    return hmac.new(
        secret, LABEL + b"|" + role + b"|" + client_hello + server_hello, hashlib.sha256
    ).digest()


def _parse_hello(data: bytes, peer: str) -> tuple[int, bytes]:
    magic, version, flags, nonce = HELLO.unpack(data)
    if magic != HELLO_MAGIC:
        raise ProtocolError(f"{peer} does not speak distributed_ondisk RPC (bad hello)")
    if version != HELLO_VERSION:
        raise ProtocolError(
            f"{peer} speaks handshake version {version}, we speak "
            f"{HELLO_VERSION} (mixed toolkit versions?)"
        )
    return flags, nonce


def _channel(
    sock: socket.socket,
    peer: str,
    secret: bytes | None,
    encrypt: bool,
    client_hello: bytes,
    server_hello: bytes,
    client_proof: bytes,
    is_server: bool,
) -> Channel:
    if not (secret and encrypt):
        return Channel(sock, peer)
    c2s, s2c = derive_keys(
        secret, client_hello[-32:], server_hello[-32:], client_hello + server_hello + client_proof
    )
    return SecureChannel(sock, peer, *((s2c, c2s) if is_server else (c2s, s2c)))


def client_handshake(
    sock: socket.socket,
    secret: bytes | None,
    peer: str,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    encrypt: bool = True,
) -> Channel:
    """Authenticate to the server on ``sock``; the channel to talk through afterwards."""
    deadline = time.monotonic() + timeout
    flags = hello_flags(secret, encrypt)
    hello = HELLO.pack(HELLO_MAGIC, HELLO_VERSION, flags, os.urandom(32))
    sockio.wait(sock, deadline)
    sock.sendall(hello)
    buf = bytearray(HELLO.size)
    sockio.recv_into(sock, memoryview(buf), deadline)
    server_hello = bytes(buf)
    server_flags, _ = _parse_hello(server_hello, peer)
    if server_flags & FLAG_AUTH and not secret:
        raise AuthenticationError(
            f"server {peer} requires a shared secret and we have none "
            f"(pass --secret-file or set DISTRIBUTED_ONDISK_SECRET_FILE)"
        )
    if secret and not server_flags & FLAG_AUTH:
        raise AuthenticationError(
            f"server {peer} runs without authentication but we have a "
            f"shared secret; refusing to talk to an unauthenticated server"
        )
    if not secret:
        return Channel(sock, peer)
    proof = _proof(secret, b"client", hello, server_hello)
    sockio.wait(sock, deadline)
    sock.sendall(proof)
    answer = bytearray(1 + PROOF_LEN)
    sockio.recv_into(sock, memoryview(answer), deadline)
    if answer[0] != 1:
        raise AuthenticationError(
            f"server {peer} rejected our shared secret (different " f"secret on the two sides?)"
        )
    if not hmac.compare_digest(bytes(answer[1:]), _proof(secret, b"server", hello, server_hello)):
        raise AuthenticationError(
            f"server {peer} failed to prove it knows the shared secret "
            f"(or the handshake was tampered with)"
        )
    # Checked once both sides are proven, so the refusal is about the setting alone.
    if server_flags != flags:
        raise AuthenticationError(
            f"server {peer} "
            + (
                "encrypts its traffic and we were asked not to"
                if not encrypt
                else "runs without encryption (started with " "--no-encryption?) and we encrypt"
            )
            + "; use the same "
            "setting on both sides"
        )
    return _channel(sock, peer, secret, encrypt, hello, server_hello, proof, False)


class ServerHandshake:
    """The server's side of one handshake, driven by whatever bytes have arrived.

    ``hello`` is what to send first; ``feed(data)`` takes received bytes and
    returns bytes to send back (possibly empty).  ``done`` becomes True once the
    peer is authenticated (then ``channel()``); a refusal raises
    AuthenticationError / ProtocolError, after which ``farewell`` holds bytes
    worth sending before closing (the "rejected" answer), if any.
    """

    def __init__(self, secret: bytes | None, encrypt: bool, peer: str) -> None:
        self.secret, self.encrypt, self.peer = secret, bool(secret) and encrypt, peer
        self.flags = hello_flags(secret, encrypt)
        self.hello = HELLO.pack(HELLO_MAGIC, HELLO_VERSION, self.flags, os.urandom(32))
        self.buf = bytearray()
        self.done = False
        self.farewell = b""
        self._client_hello = b""
        self._client_flags = 0
        self._proof = b""

    @property
    def wanted(self) -> int:
        """How many more bytes the handshake needs from the peer."""
        need = HELLO.size + (PROOF_LEN if self.secret else 0)
        return max(need - len(self.buf), 0)

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        if len(self.buf) > HELLO.size + PROOF_LEN:
            raise ProtocolError(f"client {self.peer} sent more than a handshake")
        if len(self.buf) >= HELLO.size and not self._client_hello:
            self._client_hello = bytes(self.buf[: HELLO.size])
            flags, _ = _parse_hello(self._client_hello, self.peer)
            if bool(self.secret) != bool(flags & FLAG_AUTH):
                raise AuthenticationError(
                    f"client {self.peer} "
                    + (
                        "sent no shared secret"
                        if self.secret
                        else "expects a shared secret but this server runs " "without one"
                    )
                )
            self._client_flags = flags
            if not self.secret:
                self.done = True
                return b""
        if self.secret and len(self.buf) == HELLO.size + PROOF_LEN:
            self._proof = bytes(self.buf[HELLO.size :])
            expected = _proof(self.secret, b"client", self._client_hello, self.hello)
            if not hmac.compare_digest(self._proof, expected):
                self.farewell = b"\x00" * (1 + PROOF_LEN)
                raise AuthenticationError(
                    f"client {self.peer} failed authentication (wrong " f"shared secret)"
                )
            answer = b"\x01" + _proof(self.secret, b"server", self._client_hello, self.hello)
            if self._client_flags != self.flags:  # proven: the setting alone differs
                self.farewell = answer
                raise AuthenticationError(
                    f"client {self.peer} "
                    + (
                        "does not encrypt but this server does"
                        if self.encrypt
                        else "encrypts but this server " "runs without encryption"
                    )
                )
            self.done = True
            return answer
        return b""

    def channel(self, sock: socket.socket) -> Channel:
        assert self.done, "handshake not finished"
        return _channel(
            sock,
            self.peer,
            self.secret,
            self.encrypt,
            self._client_hello,
            self.hello,
            self._proof,
            True,
        )


def server_handshake(
    sock: socket.socket,
    secret: bytes | None,
    peer: str,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    encrypt: bool = True,
) -> Channel:
    """The server's handshake on a blocking socket (tests, single-peer tools)."""
    deadline = time.monotonic() + timeout
    hs = ServerHandshake(secret, encrypt, peer)
    sockio.wait(sock, deadline)
    sock.sendall(hs.hello)
    while not hs.done:
        data = bytearray(hs.wanted)
        sockio.recv_into(sock, memoryview(data), deadline)
        try:
            reply = hs.feed(bytes(data))
        except AuthenticationError:
            if hs.farewell:
                sockio.wait(sock, deadline)
                sock.sendall(hs.farewell)
            raise
        if reply:
            sockio.wait(sock, deadline)
            sock.sendall(reply)
    return hs.channel(sock)
