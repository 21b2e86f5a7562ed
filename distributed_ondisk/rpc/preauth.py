"""Accept connections and run their handshakes in one thread, before they cost a thread.

A peer that has not authenticated yet holds one entry in a small, bounded pool
(``max_pending``) for at most ``timeout`` seconds; when the pool is full the
pending handshake that made the least progress (silent first, then oldest) is
dropped, so no number of silent or slow connections keeps a real client out:
it sends its hello at once and finishes in one round trip.  Running out of
file descriptors (EMFILE) does not make the loop spin: a reserve descriptor is
released to accept and close the connection at the head of the queue, and the
listener rests a moment before accepting again.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from distributed_ondisk.errors import AuthenticationError, ProtocolError
from distributed_ondisk.rpc.address import format_address
from distributed_ondisk.rpc.auth import ServerHandshake
from distributed_ondisk.rpc.session import Channel

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 64
DEFAULT_PREAUTH_TIMEOUT = 3.0
ACCEPT_BATCH = 16  # accepts per wake-up, so pending handshakes are served too
FD_PAUSE = 0.1  # listener rest after running out of descriptors
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass
class _Pending:
    sock: socket.socket
    peer: str
    hs: ServerHandshake
    deadline: float
    seq: int


class HandshakePool:
    def __init__(
        self,
        listener: socket.socket,
        wake: socket.socket,
        *,
        secret: bytes | None,
        encrypt: bool,
        timeout: float,
        max_pending: int,
        on_ready: Callable[[Channel], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.listener, self.wake = listener, wake
        self.secret, self.encrypt = secret, encrypt
        self.timeout, self.max_pending = timeout, max_pending
        self.on_ready, self.stopping = on_ready, stopping
        self.pending: dict[int, _Pending] = {}  # by fd, in accept order
        self.sel = selectors.DefaultSelector()
        self._seq = 0
        self._reserve: int | None = self._open_reserve()
        self._listening = False
        self._resume_at = 0.0
        self._last_fd_log = 0.0
        self.dropped_full = 0  # handshakes dropped because the pool was full

    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    def run(self) -> None:
        self.sel.register(self.wake, selectors.EVENT_READ, None)
        self._listen(True)
        try:
            while not self.stopping():
                now = time.monotonic()
                if not self._listening and now >= self._resume_at:
                    self._listen(True)
                # the first pending handshake is the oldest, so its deadline comes first
                wake_at = [next(iter(self.pending.values())).deadline] if self.pending else []
                if not self._listening:
                    wake_at.append(self._resume_at)
                timeout = max(0.0, min(wake_at) - now) if wake_at else None
                for key, _ in self.sel.select(timeout):
                    if key.fileobj is self.wake:
                        continue  # shutdown: checked by the loop condition
                    if key.fileobj is self.listener:
                        self._accept_batch()
                    elif key.fd in self.pending:
                        self._on_readable(self.pending[key.fd])
                self._expire(time.monotonic())
        finally:
            for p in list(self.pending.values()):
                self._drop(p)
            self.sel.close()
            self.listener.close()
            if self._reserve is not None:
                os.close(self._reserve)

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self.sel.register(self.listener, selectors.EVENT_READ, None)
        elif not on and self._listening:
            self.sel.unregister(self.listener)
        self._listening = on

    # -- accepting -------------------------------------------------------------
    def _accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _OUT_OF_FDS:
                    self._out_of_fds(e)
                else:
                    log.warning("accept failed: %s", e)
                return
            self._start(sock, format_address(addr[0], addr[1]))

    def _start(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        hs = ServerHandshake(self.secret, self.encrypt, peer)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sock.send(hs.hello) != len(hs.hello):
                raise BlockingIOError("hello did not fit the socket buffer")
        except OSError as e:
            log.debug("connection from %s dropped before the handshake: %s", peer, e)
            sock.close()
            return
        if len(self.pending) >= self.max_pending:
            self._evict()
        self._seq += 1
        p = _Pending(sock, peer, hs, time.monotonic() + self.timeout, self._seq)
        self.pending[sock.fileno()] = p
        self.sel.register(sock, selectors.EVENT_READ, None)
        # A real client sent its hello right after connecting: it is usually here by
        # now.  Reading it at once ranks this peer above the silent ones (see _evict).
        self._on_readable(p)

    def _evict(self) -> None:
        """Drop the pending peer that has sent nothing for longest (else the oldest)."""
        victim = min(self.pending.values(), key=lambda p: (len(p.hs.buf) > 0, p.seq))
        self.dropped_full += 1
        if self.dropped_full in (1, 100) or self.dropped_full % 10000 == 0:
            log.warning(
                "%d pending handshakes: dropping the stalest (%s); %d dropped so far "
                "(a flood of silent connections?)",
                self.max_pending,
                victim.peer,
                self.dropped_full,
            )
        self._drop(victim)

    def _out_of_fds(self, e: OSError) -> None:
        now = time.monotonic()
        if now - self._last_fd_log > 10:
            self._last_fd_log = now
            log.error(
                "accept failed: %s; refusing new connections until descriptors free "
                "up (%d pending handshakes)",
                e.strerror or e,
                len(self.pending),
            )
        if self._reserve is not None:  # free one descriptor to take the head of the queue
            os.close(self._reserve)
            self._reserve = None
            try:
                self.listener.accept()[0].close()
            except OSError:
                pass
            self._reserve = self._open_reserve()
        self._listen(False)
        self._resume_at = now + FD_PAUSE

    # -- pending handshakes ------------------------------------------------------
    def _on_readable(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(max(p.hs.wanted, 1))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("connection from %s broke during the handshake: %s", p.peer, e)
            self._drop(p)
            return
        if not data:
            log.debug("connection from %s closed during the handshake", p.peer)
            self._drop(p)
            return
        try:
            reply = p.hs.feed(data)
            if reply and p.sock.send(reply) != len(reply):
                raise ProtocolError(f"client {p.peer} does not read the handshake")
        except (AuthenticationError, ProtocolError) as e:
            log.warning("refused connection from %s: %s", p.peer, e)
            if p.hs.farewell:
                try:
                    p.sock.send(p.hs.farewell)
                except OSError:
                    pass
            self._drop(p)
            return
        except OSError as e:
            log.debug("connection from %s broke during the handshake: %s", p.peer, e)
            self._drop(p)
            return
        if p.hs.done:
            self._forget(p)
            p.sock.setblocking(True)
            self.on_ready(p.hs.channel(p.sock))

    def _expire(self, now: float) -> None:
        for p in list(self.pending.values()):
            if p.deadline > now:
                break  # in accept order, so in deadline order
            log.debug(
                "connection from %s dropped: no handshake within %.1f s", p.peer, self.timeout
            )
            self._drop(p)

    def _forget(self, p: _Pending) -> None:
        self.sel.unregister(p.sock)
        del self.pending[p.sock.fileno()]

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        p.sock.close()
