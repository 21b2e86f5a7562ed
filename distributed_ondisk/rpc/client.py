"""Call a server's methods as if they were local.

One connection per Client; calls are serialised by a lock, so a Client can be
shared by threads but runs one call at a time (use one Client per thread for
parallel calls to the same server).  A call that times out or breaks drops the
connection, since its reply may still be on the way; the next call reconnects.
Calls are never retried: a method may not be safe to run twice.  A connection
the server closed while idle (its idle timeout) is noticed before the next
request is sent, and replaced: nothing was in flight on it.  With a secret,
traffic is encrypted unless ``encrypt=False`` (or DISTRIBUTED_ONDISK_RPC_PLAINTEXT=1);
both sides must agree.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed_ondisk.errors import (
    AuthenticationError,
    ConnectionLost,
    ForbiddenError,
    ProtocolError,
    RemoteError,
    RPCError,
    RPCTimeout,
)
from distributed_ondisk.rpc import framing
from distributed_ondisk.rpc.address import parse_address
from distributed_ondisk.rpc.auth import client_handshake
from distributed_ondisk.rpc.secret import check_secret
from distributed_ondisk.rpc.server import encryption_default
from distributed_ondisk.rpc.session import Channel

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

log = logging.getLogger(__name__)


class Client:
    def __init__(
        self,
        address: str,
        *,
        secret: bytes | None,
        timeout: float | None = 600,
        connect_timeout: float = 30,
        max_message_bytes: int = framing.DEFAULT_MAX_MESSAGE_BYTES,
        encrypt: bool | None = None,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.address = address
        self.secret = check_secret(secret, "Client(secret=...)") if secret else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.encrypt = encryption_default(encrypt)
        self._lock = threading.Lock()
        self._chan: Channel | None = None
        self._next_id = 0
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError as e:
            raise RPCTimeout(
                f"connecting to {self.address} timed out after " f"{self.connect_timeout} s"
            ) from e
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {self.address}: {e.strerror or e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            chan = client_handshake(
                sock, self.secret, self.address, self.connect_timeout, encrypt=self.encrypt
            )
        except BaseException as e:
            sock.close()
            if isinstance(e, socket.timeout):
                raise RPCTimeout(f"handshake with {self.address} timed out") from e
            if isinstance(e, ConnectionLost):
                raise ConnectionLost(
                    f"{self.address} closed the connection during the " f"handshake"
                ) from e
            if isinstance(e, OSError):
                raise ConnectionLost(f"handshake with {self.address} failed: {e}") from e
            raise
        sock.settimeout(None)
        self._chan = chan
        log.debug("connected to %s", self.address)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on the server with the client's default timeout."""
        return self.call_with_timeout(self.timeout, method, *args, **kwargs)

    def call_with_timeout(
        self, timeout: float | None, method: str, *args: Any, **kwargs: Any
    ) -> Any:
        """Call ``method``; RPCTimeout if the reply has not come within ``timeout`` s."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            views = framing.encode_message(framing.KIND_REQUEST, request_id, (method, args, kwargs))
            if self._chan is not None and self._chan.pending():
                # Nothing is owed to us between calls: the server closed it (idle) or
                # the stream is out of step.  Either way no request is lost: reconnect.
                log.debug(
                    "connection to %s closed by the server while idle; reconnecting", self.address
                )
                self._drop()
            if self._chan is None:
                self._connect()
            chan = self._chan
            assert chan is not None
            deadline = None if timeout is None else time.monotonic() + timeout
            if deadline is None:
                chan.sock.settimeout(None)
            try:
                framing.send_views(chan, views, deadline)
                kind, reply_id, reply = framing.recv_message(
                    chan, max_bytes=self.max_message_bytes, deadline=deadline
                )
            except RPCTimeout as e:
                self._drop()
                raise RPCTimeout(
                    f"call {method}() to {self.address} timed out after " f"{timeout} s"
                ) from e
            except ConnectionLost as e:
                self._drop()
                raise ConnectionLost(
                    f"connection to {self.address} lost during {method}(): " f"{e}"
                ) from e
            except (ForbiddenError, ProtocolError) as e:
                self._drop()
                raise type(e)(f"reply of {self.address} to {method}() refused: {e}") from e
            except BaseException:
                self._drop()  # e.g. KeyboardInterrupt mid-message: the stream is out of step
                raise
            if reply_id != request_id and kind != framing.KIND_FATAL:
                self._drop()
                raise ProtocolError(
                    f"{self.address} answered request {reply_id}, expected " f"{request_id}"
                )
            if kind == framing.KIND_REPLY:
                return reply
            if kind == framing.KIND_FATAL:
                self._drop()
            raise _remote_error(reply, self.address)

    def proxy(self) -> _Proxy:
        """An object whose attributes call the server's methods."""
        return _Proxy(self)

    def methods(self) -> list[str]:
        return self.call("methods")

    def _drop(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r})"


class _Proxy:
    def __init__(self, client: Client) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self._client.call, name)

    def __repr__(self) -> str:
        return f"<proxy of {self._client.address}>"


def _remote_error(reply: Any, address: str) -> RemoteError:
    if isinstance(reply, tuple) and len(reply) == 3 and all(isinstance(x, str) for x in reply):
        return RemoteError(reply[0], reply[1], reply[2], server=address)
    return RemoteError("ProtocolError", f"malformed error reply {reply!r:.200}", "", server=address)


def wait_ready(
    address: str, *, secret: bytes | None, timeout: float = 60.0, encrypt: bool | None = None
) -> None:
    """Poll ``ping`` until the server at ``address`` answers; RPCTimeout otherwise.

    A wrong or missing secret fails at once (AuthenticationError): waiting would not fix it.
    """
    deadline = time.monotonic() + timeout
    delay, last = 0.02, "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        try:
            with Client(
                address,
                secret=secret,
                timeout=max(remaining, 0.1),
                connect_timeout=max(min(remaining, 5.0), 0.1),
                encrypt=encrypt,
            ) as client:
                client.call("ping")
                return
        except AuthenticationError:
            raise
        except (RPCError, OSError) as e:
            last = str(e)
        if time.monotonic() + delay > deadline:
            raise RPCTimeout(
                f"no server answered at {address} within {timeout} s " f"(last error: {last})"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
