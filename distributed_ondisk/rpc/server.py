"""Serve an object's allowlisted methods over TCP, one thread per connection.

Every connection first passes the handshake (with its own short timeout, so a
peer that connects and says nothing is dropped and never blocks anyone), then
loops: receive a request, call the method, send the reply.  Anything refused
(unknown method, forbidden pickle content, malformed frame) is logged with the
peer's address; a refused *payload* closes that connection, the server goes on.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from distributed_ondisk.errors import (AuthenticationError, ConnectionLost, ForbiddenError,
                                       InputError, ProtocolError, RPCError)
from distributed_ondisk.rpc import framing
from distributed_ondisk.rpc.address import format_address, is_loopback
from distributed_ondisk.rpc.auth import DEFAULT_HANDSHAKE_TIMEOUT, server_handshake

log = logging.getLogger(__name__)

BUILTIN_METHODS = ("ping", "methods")


@dataclass
class _Connection:
    sock: socket.socket
    peer: str
    busy: bool = False
    thread: Optional[threading.Thread] = field(default=None, repr=False)


def _exposed_methods(obj: Any, methods: Optional[Iterable[str]]) -> frozenset[str]:
    names = methods if methods is not None else getattr(obj, "RPC_METHODS", None)
    if names is None:
        raise InputError(f"{type(obj).__name__} declares no RPC_METHODS; list the methods to "
                         f"expose in RPC_METHODS or pass methods=")
    if isinstance(names, str):
        raise InputError(f"RPC methods must be a list of names, not the string {names!r}")
    exposed = set()
    for name in names:
        if name.startswith("_"):
            log.warning("not exposing %s.%s: names starting with '_' are never callable",
                        type(obj).__name__, name)
            continue
        if name in BUILTIN_METHODS:
            raise InputError(f"{type(obj).__name__}.{name} clashes with the built-in RPC "
                             f"method {name!r}")
        if not callable(getattr(obj, name, None)):
            raise InputError(f"{type(obj).__name__} has no callable method {name!r} to expose")
        exposed.add(name)
    return frozenset(exposed)


class Server:
    """Expose ``obj``'s methods (``RPC_METHODS`` or ``methods=``) to authenticated clients.

    Without a secret the server refuses to start unless ``allow_insecure_loopback``
    is set *and* it listens on a loopback address only.
    """

    def __init__(self, obj: Any, *, host: str = "127.0.0.1", port: int = 0,
                 secret: Optional[bytes], allow_insecure_loopback: bool = False,
                 methods: Optional[Iterable[str]] = None, name: Optional[str] = None,
                 max_message_bytes: int = framing.DEFAULT_MAX_MESSAGE_BYTES,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_connections: int = 1000) -> None:
        if not secret:
            if not allow_insecure_loopback:
                raise InputError("refusing to serve without a shared secret: pass one "
                                 "(--secret-file / DISTRIBUTED_ONDISK_SECRET_FILE) or allow an "
                                 "insecure loopback-only server explicitly (--insecure)")
            if not is_loopback(host):
                raise InputError(f"refusing to serve without a shared secret on {host!r}, "
                                 f"which is not a loopback address: use a secret")
        self.obj = obj
        self.host, self.port = host, port
        self.secret = secret or None
        self.name = name or type(obj).__name__
        self.methods = _exposed_methods(obj, methods)
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self._listener: Optional[socket.socket] = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._conns: dict[int, _Connection] = {}
        self._stopping = False
        self._stop_requested = False
        self._stopped = threading.Event()
        self._accept_thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Server":
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise ConnectionLost(f"cannot listen on {format_address(self.host, self.port)}: "
                                 f"{e.strerror or e}") from e
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"rpc-accept-{self.port}")
        self._accept_thread.start()
        log.info("serving %s (%d methods) on %s%s", self.name, len(self.methods), self.address,
                 "" if self.secret else " WITHOUT authentication (loopback only)")
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

    def __enter__(self) -> "Server":
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- accepting ---------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        try:
            while True:
                select.select([listener, self._wake_r], [], [])
                if self._stopping:
                    return
                try:
                    sock, addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:  # e.g. EMFILE: back off instead of spinning
                    log.error("accept on %s failed: %s", self.address, e)
                    time.sleep(0.1)
                    continue
                self._admit(sock, format_address(addr[0], addr[1]))
        finally:
            listener.close()

    def _admit(self, sock: socket.socket, peer: str) -> None:
        with self._lock:
            if self._stopping or len(self._conns) >= self.max_connections:
                log.warning("refusing connection from %s: %s", peer,
                            "shutting down" if self._stopping else
                            f"{self.max_connections} connections open")
                sock.close()
                return
            conn = _Connection(sock, peer)
            self._conns[id(conn)] = conn
            conn.thread = threading.Thread(target=self._serve_connection, args=(conn,),
                                           daemon=True, name=f"rpc-conn-{peer}")
        log.debug("accepted connection from %s", peer)
        conn.thread.start()

    # -- one connection ----------------------------------------------------
    def _serve_connection(self, conn: _Connection) -> None:
        sock, peer = conn.sock, conn.peer
        try:
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                server_handshake(sock, self.secret, peer, self.handshake_timeout)
            except (AuthenticationError, ProtocolError) as e:
                log.warning("refused connection from %s: %s", peer, e)
                return
            except (OSError, RPCError) as e:
                log.debug("connection from %s dropped during the handshake: %s", peer, e)
                return
            sock.settimeout(None)
            log.debug("authenticated %s", peer)
            while self._serve_one(conn):
                pass
        finally:
            with self._lock:
                self._conns.pop(id(conn), None)
            sock.close()
            log.debug("closed connection from %s", peer)

    def _serve_one(self, conn: _Connection) -> bool:
        """Receive and answer one request; False when the connection should end."""
        sock, peer = conn.sock, conn.peer
        try:
            kind, request_id, message = framing.recv_message(sock,
                                                             max_bytes=self.max_message_bytes)
            if kind != framing.KIND_REQUEST:
                raise ProtocolError(f"expected a request frame, got kind {kind}")
            if not (isinstance(message, tuple) and len(message) == 3
                    and isinstance(message[0], str) and isinstance(message[1], tuple)
                    and isinstance(message[2], dict)):
                raise ProtocolError("a request must be (method name, args tuple, kwargs dict)")
        except ConnectionLost:
            return False
        except (ForbiddenError, ProtocolError) as e:
            log.warning("refused a message from %s: %s", peer, e)
            self._send_best_effort(sock, framing.KIND_FATAL, 0, _error_tuple(e))
            return False
        except (OSError, RPCError) as e:
            log.debug("connection from %s broke: %s", peer, e)
            return False
        method, args, kwargs = message
        with self._lock:
            if self._stopping:
                self._send_best_effort(sock, framing.KIND_FATAL, request_id, (
                    "distributed_ondisk.errors.ConnectionLost",
                    f"{self.name} is shutting down", ""))
                return False
            conn.busy = True
        try:
            kind, reply = framing.KIND_REPLY, self._dispatch(method, args, kwargs, peer)
        except Exception as e:
            kind, reply = framing.KIND_ERROR, _error_tuple(e)
        try:
            try:
                views = framing.encode_message(kind, request_id, reply)
            except ProtocolError as e:
                views = framing.encode_message(framing.KIND_ERROR, request_id, _error_tuple(e))
            framing.send_views(sock, views)
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
            raise ForbiddenError(f"{self.name} does not expose a method {method!r} (exposed: "
                                 f"{', '.join(sorted(self.methods)) or 'none'})")
        return getattr(self.obj, method)(*args, **kwargs)

    def _send_best_effort(self, sock: socket.socket, kind: int, request_id: int,
                          obj: Any) -> None:
        try:
            sock.settimeout(1.0)
            framing.send_message(sock, kind, request_id, obj)
        except (OSError, RPCError):
            pass


def _error_tuple(e: BaseException) -> tuple[str, str, str]:
    cls = type(e)
    qualname = cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"
    return qualname, str(e), "".join(traceback.format_exception(type(e), e, e.__traceback__))


def _shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
