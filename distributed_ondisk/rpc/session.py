"""The byte stream after the handshake: plain, or sealed records (AES-256-GCM).

With a shared secret, each direction has its own key, derived with HKDF-SHA256
from the secret, both nonces and the handshake transcript (so a key is never
reused across connections, and a tampered handshake yields keys that do not
match).  The stream is cut into records of at most ``RECORD_BYTES`` plaintext:

    u32 ciphertext length | AES-GCM(key, nonce = 4 zero bytes | u64 counter,
                                    aad = the length field)

The counter is implicit (each side counts the records it sent / received), so
a flipped, injected, replayed, reordered or dropped record fails its tag and
the connection closes with a ProtocolError; nothing unauthenticated reaches
the decoder.  A direction that would exceed ``MAX_RECORDS`` closes instead
of wrapping its counter.  Sizes and timing of records remain visible.
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
import time
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from distributed_ondisk.errors import ConnectionLost, ProtocolError
from distributed_ondisk.rpc import sockio

RECORD_BYTES = 512 << 10  # plaintext per record: big enough for few syscalls, small RAM
TAG_BYTES = 16
LARGE_VIEW = 64 << 10  # views from this size are sealed from their own memory
LENGTH = struct.Struct("<I")
NONCE = struct.Struct("<4xQ")  # 4 zero bytes | the record counter
MAX_RECORDS = 1 << 48  # per direction and connection; then the connection closes
KEY_INFO = b"distributed_ondisk-rpc-v2 session keys"


def derive_keys(
    secret: bytes, client_nonce: bytes, server_nonce: bytes, transcript: bytes
) -> tuple[bytes, bytes]:
    """(client->server key, server->client key) for one connection."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=client_nonce + server_nonce,
        info=KEY_INFO + b"|" + hashlib.sha256(transcript).digest(),
    ).derive(secret)
    return okm[:32], okm[32:]


class Channel:
    """A connected socket seen as a byte stream (the plain variant).

    Attributes it does not define (settimeout, shutdown, fileno, ...) are the socket's,
    so code written for a raw socket works on a channel.
    """

    encrypted = False

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock, self.peer = sock, peer

    def send_views(self, views: list[memoryview], deadline: float | None = None) -> None:
        sockio.send_views(self.sock, views, deadline)

    def recv_exact(self, view: memoryview, deadline: float | None = None) -> None:
        sockio.recv_into(self.sock, view, deadline)

    def sendall(self, data: Any) -> None:
        self.send_views([memoryview(data).cast("B")], None)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def pending(self) -> bool:
        """True if bytes (or the peer's close) are waiting to be read."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        if name == "sock":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sock, name)


class SecureChannel(Channel):
    encrypted = True

    def __init__(self, sock: socket.socket, peer: str, send_key: bytes, recv_key: bytes) -> None:
        super().__init__(sock, peer)
        self._send_aead, self._recv_aead = AESGCM(send_key), AESGCM(recv_key)
        self._send_count = self._recv_count = 0
        self._out: np.ndarray | None = None  # sealed record being sent
        self._ct: np.ndarray | None = None  # sealed record being received
        self._pt: np.ndarray | None = None  # opened record not yet consumed
        self._pt_pos = self._pt_end = 0
        self._len = bytearray(LENGTH.size)

    # -- sending -------------------------------------------------------------
    def _seal_and_send(self, data: Any, deadline: float | None) -> None:
        n = memoryview(data).nbytes
        if self._send_count >= MAX_RECORDS:
            raise ConnectionLost(
                f"connection to {self.peer} sent {MAX_RECORDS} records with "
                f"one key; closing it (the next call reconnects)"
            )
        size = LENGTH.size + n + TAG_BYTES
        if self._out is None or self._out.nbytes < size:
            self._out = np.empty(max(size, 4096), dtype=np.uint8)
        out = memoryview(self._out)
        head = LENGTH.pack(n + TAG_BYTES)
        out[: LENGTH.size] = head
        self._send_aead.encrypt_into(
            NONCE.pack(self._send_count), data, head, out[LENGTH.size : size]
        )
        self._send_count += 1
        sockio.send_views(self.sock, [out[:size]], deadline)

    def send_views(self, views: list[memoryview], deadline: float | None = None) -> None:
        """Seal the concatenation of ``views`` as records: small views are joined, large
        ones sealed straight from their memory (one copy: into the sealed record)."""
        batch: list[memoryview] = []
        batched = 0
        for v in views:
            v = v.cast("B") if v.format != "B" or v.ndim != 1 else v
            if batch and v.nbytes >= LARGE_VIEW:
                # A large buffer starts a record of its own: its records then land
                # straight in the receiver's final buffer (no copy on either side).
                self._seal_and_send(batch[0] if len(batch) == 1 else b"".join(batch), deadline)
                batch, batched = [], 0
            pos = 0
            while pos < v.nbytes:
                take = min(v.nbytes - pos, RECORD_BYTES - batched)
                if not batch and take == RECORD_BYTES:
                    self._seal_and_send(v[pos : pos + take], deadline)
                else:
                    batch.append(v[pos : pos + take])
                    batched += take
                    if batched == RECORD_BYTES:
                        self._seal_and_send(b"".join(batch), deadline)
                        batch, batched = [], 0
                pos += take
        if batch:
            self._seal_and_send(batch[0] if len(batch) == 1 else b"".join(batch), deadline)

    # -- receiving -------------------------------------------------------------
    def _open_next(self, dest: memoryview | None, deadline: float | None) -> int:
        """Receive and open one record: straight into ``dest`` when it has room for all
        of it (returns its length), else into the internal buffer (returns 0)."""
        sockio.recv_into(self.sock, memoryview(self._len), deadline)
        (clen,) = LENGTH.unpack(self._len)
        if not TAG_BYTES <= clen <= RECORD_BYTES + TAG_BYTES:
            raise ProtocolError(
                f"sealed record of {clen} bytes from {self.peer}: not a "
                f"record of this protocol (stream corrupted or forged)"
            )
        if self._ct is None or self._ct.nbytes < clen:
            self._ct = np.empty(max(clen, 4096), dtype=np.uint8)
        ct = memoryview(self._ct)[:clen]
        sockio.recv_into(self.sock, ct, deadline)
        if self._recv_count >= MAX_RECORDS:
            raise ProtocolError(f"{self.peer} sent more than {MAX_RECORDS} records with one key")
        nonce = NONCE.pack(self._recv_count)
        n = clen - TAG_BYTES
        direct = dest is not None and dest.nbytes >= n
        if direct:
            target = dest[:n]
        else:
            if self._pt is None or self._pt.nbytes < n:
                self._pt = np.empty(max(n, 4096), dtype=np.uint8)
            target = memoryview(self._pt)[:n]
        try:
            self._recv_aead.decrypt_into(nonce, ct, bytes(self._len), target)
        except InvalidTag:
            raise ProtocolError(
                f"a record from {self.peer} failed its integrity check "
                f"(tampered with, replayed, reordered, dropped or injected "
                f"on the way); closing the connection"
            ) from None
        self._recv_count += 1
        if direct:
            return n
        self._pt_pos, self._pt_end = 0, n
        return 0

    def recv_exact(self, view: memoryview, deadline: float | None = None) -> None:
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        pos, total = 0, view.nbytes
        while pos < total:
            if self._pt_pos < self._pt_end:
                take = min(self._pt_end - self._pt_pos, total - pos)
                view[pos : pos + take] = memoryview(self._pt)[self._pt_pos : self._pt_pos + take]
                self._pt_pos += take
                pos += take
                continue
            pos += self._open_next(view[pos:], deadline)

    def recv(self, n: int) -> bytes:
        """Up to ``n`` plaintext bytes; b"" when the peer closed between records."""
        if self._pt_pos >= self._pt_end:
            timeout = self.sock.gettimeout()
            try:
                self._open_next(None, None if timeout is None else time.monotonic() + timeout)
            except ConnectionLost:
                return b""
        take = min(n, self._pt_end - self._pt_pos)
        out = bytes(memoryview(self._pt)[self._pt_pos : self._pt_pos + take])
        self._pt_pos += take
        return out

    def pending(self) -> bool:
        return self._pt_pos < self._pt_end or super().pending()
