"""Serve an object's allowlisted methods over TCP, one thread per authenticated connection.

Every connection first passes the handshake in the accept thread's bounded pool
(:mod:`preauth`: short deadline, no thread, stalest dropped when full, so a
flood of silent peers never blocks anyone), then gets a thread that loops:
receive a request, call the method, send the reply, over the encrypted channel
of :mod:`session`.  An authenticated peer that sends nothing for
``idle_timeout`` s, or does not take its reply within the send deadline, is
dropped.  Anything refused (unknown method, content the codec refuses, malformed
or tampered frame) is logged with the peer's address; a refused *payload*
closes that connection, the server goes on.  Errors go back to the peer as
type and message only; the traceback stays in the server's log unless the
server runs with ``debug_errors`` (or DISTRIBUTED_ONDISK_RPC_DEBUG=1).

Why one module of ~450 lines: the accept loop, the per-connection loop and shutdown
share one connection table, its lock and the stop event; split apart, each half
would reach into the other's state.  The pieces that stand alone already live
beside it (preauth, session, framing, codec).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed_ondisk.errors import (
    ConnectionLost,
    DistributedOndiskError,
    ForbiddenError,
    InputError,
    ProtocolError,
    RPCError,
    RPCTimeout,
)
from distributed_ondisk.rpc import framing
from distributed_ondisk.rpc.address import format_address, is_loopback
from distributed_ondisk.rpc.preauth import (
    DEFAULT_MAX_PENDING,
    DEFAULT_PREAUTH_TIMEOUT,
    HandshakePool,
)
from distributed_ondisk.rpc.secret import check_secret
from distributed_ondisk.rpc.session import Channel

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

log = logging.getLogger(__name__)

BUILTIN_METHODS = ("ping", "methods")
ENV_DEBUG = "DISTRIBUTED_ONDISK_RPC_DEBUG"
ENV_PLAINTEXT = "DISTRIBUTED_ONDISK_RPC_PLAINTEXT"
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_SEND_TIMEOUT = 60.0
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def encryption_default(encrypt: bool | None) -> bool:
    """On unless asked off: ``encrypt=False`` or DISTRIBUTED_ONDISK_RPC_PLAINTEXT=1."""
    return (not env_flag(ENV_PLAINTEXT)) if encrypt is None else bool(encrypt)


@dataclass
class _Connection:
    chan: Channel
    peer: str
    busy: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def sock(self) -> socket.socket:
        return self.chan.sock


def _exposed_methods(obj: Any, methods: Iterable[str] | None) -> frozenset[str]:
    names = methods if methods is not None else getattr(obj, "RPC_METHODS", None)
    if names is None:
        raise InputError(
            f"{type(obj).__name__} declares no RPC_METHODS; list the methods to "
            f"expose in RPC_METHODS or pass methods="
        )
    if isinstance(names, str):
        raise InputError(f"RPC methods must be a list of names, not the string {names!r}")
    exposed = set()
    for name in names:
        if name.startswith("_"):
            log.warning(
                "not exposing %s.%s: names starting with '_' are never callable",
                type(obj).__name__,
                name,
            )
            continue
        if name in BUILTIN_METHODS:
            raise InputError(
                f"{type(obj).__name__}.{name} clashes with the built-in RPC " f"method {name!r}"
            )
        if not callable(getattr(obj, name, None)):
            raise InputError(f"{type(obj).__name__} has no callable method {name!r} to expose")
        exposed.add(name)
    return frozenset(exposed)


class Server:
    """Expose ``obj``'s methods (``RPC_METHODS`` or ``methods=``) to authenticated clients.

    Without a secret the server refuses to start unless ``allow_insecure_loopback``
    is set *and* it listens on a loopback address only.  With a secret, traffic is
    encrypted unless ``encrypt=False`` (or DISTRIBUTED_ONDISK_RPC_PLAINTEXT=1).
    ``handshake_timeout``/``max_pending`` bound the unauthenticated pool,
    ``max_connections`` the authenticated ones; ``idle_timeout`` drops a silent
    authenticated peer, ``send_timeout`` (plus 1 s per 10 MB) a peer that does not
    take its reply or trickles its request.
    """

    def __init__(
        self,
        obj: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: bytes | None,
        allow_insecure_loopback: bool = False,
        methods: Iterable[str] | None = None,
        name: str | None = None,
        max_message_bytes: int = framing.DEFAULT_MAX_MESSAGE_BYTES,
        handshake_timeout: float = DEFAULT_PREAUTH_TIMEOUT,
        max_connections: int = 1000,
        max_pending: int = DEFAULT_MAX_PENDING,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        encrypt: bool | None = None,
        debug_errors: bool | None = None,
    ) -> None:
        for label, value in (
            ("handshake_timeout", handshake_timeout),
            ("send_timeout", send_timeout),
            ("max_pending", max_pending),
            ("max_connections", max_connections),
            ("idle_timeout", 1 if idle_timeout is None else idle_timeout),
        ):
            if not value > 0:
                raise InputError(f"RPC server {label} must be positive, not {value!r}")
        if not secret:
            if not allow_insecure_loopback:
                raise InputError(
                    "refusing to serve without a shared secret: pass one "
                    "(--secret-file / DISTRIBUTED_ONDISK_SECRET_FILE) or allow an "
                    "insecure loopback-only server explicitly (--insecure)"
                )
            if not is_loopback(host):
                raise InputError(
                    f"refusing to serve without a shared secret on {host!r}, "
                    f"which is not a loopback address: use a secret"
                )
        self.obj = obj
        self.host, self.port = host, port
        self.secret = check_secret(secret, "Server(secret=...)") if secret else None
        self.name = name or type(obj).__name__
        self.methods = _exposed_methods(obj, methods)
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.idle_timeout, self.send_timeout = idle_timeout, send_timeout
        self.encrypt = bool(self.secret) and encryption_default(encrypt)
        self.debug_errors = env_flag(ENV_DEBUG) if debug_errors is None else debug_errors
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._conns: dict[int, _Connection] = {}
        self._stopping = False
        self._stop_requested = False
        self._stopped = threading.Event()
        self._accept_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> Server:
        infos = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
        except OSError as e:
            sock.close()
            raise ConnectionLost(
                f"cannot listen on {format_address(self.host, self.port)}: " f"{e.strerror or e}"
            ) from e
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        pool = HandshakePool(
            sock,
            self._wake_r,
            secret=self.secret,
            encrypt=self.encrypt,
            timeout=self.handshake_timeout,
            max_pending=self.max_pending,
            on_ready=self._admit,
            stopping=lambda: self._stopping,
        )
        self._accept_thread = threading.Thread(
            target=pool.run, daemon=True, name=f"rpc-accept-{self.port}"
        )
        self._accept_thread.start()
        log.info(
            "serving %s (%d methods) on %s%s",
            self.name,
            len(self.methods),
            self.address,
            (
                " WITHOUT authentication (loopback only)"
                if not self.secret
                else "" if self.encrypt else " authenticated but NOT encrypted (as asked)"
            ),
        )
        return self

    @property
    def address(self) -> str:
        if self._listener is None:
            raise InputError("server not started: call start() first")
        return format_address(self.host, self.port)

    def serve_forever(self) -> None:
        """Serve until shutdown(), SIGTERM or SIGINT; then stop gracefully."""
        if self._listener is None:
            self.start()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            # Poll a plain flag: a signal handler must not take locks (Event.set does).
            while not self._stop_requested and not self._stopped.wait(0.1):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop accepting, let in-flight calls finish and reply, close every connection."""
        with self._lock:
            if self._stopping:
                already = True
            else:
                already, self._stopping = False, True
                for conn in self._conns.values():
                    if not conn.busy:
                        _shutdown_socket(conn.sock)
        if already:
            self._stopped.wait(timeout)
            return
        log.info("shutting down %s on %s", self.name, self.address if self._listener else "-")
        self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [c.thread for c in self._conns.values() if c.thread is not None]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()

    def __enter__(self) -> Self:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- authenticated connections -----------------------------------------
    def _admit(self, chan: Channel) -> None:
        """Called by the handshake pool with a freshly authenticated channel."""
        peer = chan.peer
        with self._lock:
            if self._stopping or len(self._conns) >= self.max_connections:
                log.warning(
                    "refusing connection from %s: %s",
                    peer,
                    (
                        "shutting down"
                        if self._stopping
                        else f"{self.max_connections} connections open"
                    ),
                )
                chan.close()
                return
            conn = _Connection(chan, peer)
            self._conns[id(conn)] = conn
            conn.thread = threading.Thread(
                target=self._serve_connection, args=(conn,), daemon=True, name=f"rpc-conn-{peer}"
            )
        log.debug("authenticated %s%s", peer, " (encrypted)" if chan.encrypted else "")
        try:
            conn.thread.start()
        except RuntimeError as e:  # no thread left: refuse this one, keep serving
            log.error("cannot serve %s: %s", peer, e)
            with self._lock:
                self._conns.pop(id(conn), None)
            chan.close()

    def _serve_connection(self, conn: _Connection) -> None:
        try:
            while self._serve_one(conn):
                pass
        finally:
            with self._lock:
                self._conns.pop(id(conn), None)
            conn.chan.close()
            log.debug("closed connection from %s", conn.peer)

    def _serve_one(self, conn: _Connection) -> bool:
        """Receive and answer one request; False when the connection should end."""
        chan, peer = conn.chan, conn.peer
        idle = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
        try:
            kind, request_id, message = framing.recv_message(
                chan,
                max_bytes=self.max_message_bytes,
                deadline=idle,
                body_allowance=self.send_timeout,
            )
            if kind != framing.KIND_REQUEST:
                raise ProtocolError(f"expected a request frame, got kind {kind}")
            if not (
                isinstance(message, tuple)
                and len(message) == 3
                and isinstance(message[0], str)
                and isinstance(message[1], tuple)
                and isinstance(message[2], dict)
            ):
                raise ProtocolError("a request must be (method name, args tuple, kwargs dict)")
        except ConnectionLost:
            return False
        except RPCTimeout:
            log.info(
                "dropping connection from %s: no request for %s s, or a request "
                "not received in time",
                peer,
                self.idle_timeout,
            )
            return False
        except (ForbiddenError, ProtocolError) as e:
            log.warning("refused a message from %s: %s", peer, e)
            self._send_best_effort(chan, framing.KIND_FATAL, 0, _error_tuple(e, False))
            return False
        except (OSError, RPCError) as e:
            log.debug("connection from %s broke: %s", peer, e)
            return False
        method, args, kwargs = message
        with self._lock:
            if self._stopping:
                self._send_best_effort(
                    chan,
                    framing.KIND_FATAL,
                    request_id,
                    (
                        "distributed_ondisk.errors.ConnectionLost",
                        f"{self.name} is shutting down",
                        "",
                    ),
                )
                return False
            conn.busy = True
        try:
            kind, reply = framing.KIND_REPLY, self._dispatch(method, args, kwargs, peer)
        except Exception as e:
            if isinstance(e, DistributedOndiskError):
                log.info("%s() from %s raised %s: %s", method, peer, type(e).__name__, e)
            else:  # unexpected: the full traceback goes to our log, not to the peer
                log.warning("%s() from %s raised", method, peer, exc_info=True)
            kind, reply = framing.KIND_ERROR, _error_tuple(e, self.debug_errors)
        try:
            try:
                views = framing.encode_message(kind, request_id, reply)
            except ProtocolError as e:
                views = framing.encode_message(
                    framing.KIND_ERROR, request_id, _error_tuple(e, self.debug_errors)
                )
            deadline = framing.transfer_deadline(sum(v.nbytes for v in views), self.send_timeout)
            framing.send_views(chan, views, deadline)
        except RPCTimeout:
            log.warning(
                "dropping connection from %s: it did not take its reply of %s() in "
                "time (not reading?)",
                peer,
                method,
            )
            return False
        except (OSError, RPCError) as e:
            log.debug("could not reply to %s: %s", peer, e)
            return False
        finally:
            with self._lock:
                conn.busy = False
                stopping = self._stopping
        return not stopping

    def _dispatch(self, method: str, args: tuple, kwargs: dict, peer: str) -> Any:
        if method == "ping":
            return {"name": self.name, "pid": os.getpid()}
        if method == "methods":
            return sorted(self.methods)
        if method.startswith("_") or method not in self.methods:
            log.warning("refused call of %r from %s: not an exposed method", method, peer)
            raise ForbiddenError(
                f"{self.name} does not expose a method {method!r} (exposed: "
                f"{', '.join(sorted(self.methods)) or 'none'})"
            )
        return getattr(self.obj, method)(*args, **kwargs)

    def _send_best_effort(self, chan: Channel, kind: int, request_id: int, obj: Any) -> None:
        try:
            framing.send_message(chan, kind, request_id, obj, time.monotonic() + 1.0)
        except (OSError, RPCError):
            pass


def _error_tuple(e: BaseException, debug: bool) -> tuple[str, str, str]:
    """What a peer learns of an error: type and message; the traceback only in debug."""
    cls = type(e)
    qualname = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)) if debug else ""
    return qualname, str(e), tb


def _shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
