"""k-means over RPC: the server side (serve a dataset) and the client side
(a ``DatasetAssign`` proxy per server, counting the bytes it exchanges).

Per iteration a server receives the centroids (k*d float32) and sends back
the reduced assignment (k*d float64 sums + k int64 counts + the objective),
so both directions stay under 8*k*(d+1) bytes + a small header whatever the
number of vectors it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.errors import RPCError
from distributed_ondisk.kmeans.base import AssignResult, check_centroids
from distributed_ondisk.kmeans.shards import ShardedAssign
from distributed_ondisk.rpc import Client, Server, framing, wait_ready

log = logging.getLogger(__name__)

#: Default seconds one call may take (an iteration of a large slice is long).
DEFAULT_CALL_TIMEOUT = 3600.0


def message_bytes(obj: Any) -> int:
    """Bytes ``obj`` takes on the wire as one RPC message (header included)."""
    return sum(v.nbytes for v in framing.encode_message(framing.KIND_REPLY, 0, obj))


class RemoteAssign:
    """A ``DatasetAssign`` served at ``address``; ``bytes_sent`` / ``bytes_received``
    count the payload of every call (``last_call_bytes`` the latest one)."""

    def __init__(
        self,
        address: str,
        *,
        secret: bytes | None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT,
        connect_timeout: float = 30.0,
    ) -> None:
        self.name = address
        self.client = Client(
            address, secret=secret, timeout=timeout, connect_timeout=connect_timeout
        )
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_call_bytes = (0, 0)
        self._dim: int | None = None
        self._count: int | None = None
        self._accelerated: bool | None = None
        self.tree = False  # serves tree_assign (set by describe())

    @property
    def accelerated(self) -> bool:
        """Whether the server answers assign_accel with bounds (its describe() says)."""
        if self._accelerated is None:
            self._accelerated = bool(self.describe().get("accelerated", False))
        return self._accelerated

    def _call(self, method: str, *args: Any) -> Any:
        sent = message_bytes((method, args, {}))
        reply = self.client.call(method, *args)
        received = message_bytes(reply)
        self.bytes_sent += sent
        self.bytes_received += received
        self.last_call_bytes = (sent, received)
        return reply

    def count(self) -> int:
        if self._count is None:
            self._count = int(self._call("count"))
        return self._count

    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._call("dim"))
        return self._dim

    def describe(self) -> dict:
        info = self._call("describe")
        # kept: connect_servers logs describe() once, and a later call would shift the
        # calls a server sees (the crash tests count them)
        if isinstance(info, dict):
            self._accelerated = bool(info.get("accelerated", False))
            self.tree = bool(info.get("tree", False))
        return info

    def get_subset(self, indices: np.ndarray) -> np.ndarray:
        return self._call("get_subset", np.ascontiguousarray(indices, np.int64))

    def select(self, indices: np.ndarray | None) -> int:
        arg = None if indices is None else np.ascontiguousarray(indices, np.int64)
        self._count = int(self._call("select", arg))
        return self._count

    def perform_search(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._call("perform_search", check_centroids(centroids, self.dim()))

    def assign_to(self, centroids: np.ndarray, weights: np.ndarray | None = None) -> AssignResult:
        res = self._call("assign_to", check_centroids(centroids, self.dim()), weights)
        if not isinstance(res, AssignResult):
            raise RPCError(f"{self.name} answered assign_to with a {type(res).__name__}")
        return res

    def assign_accel(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> AssignResult:
        res = self._call("assign_accel", check_centroids(centroids, self.dim()), weights)
        if not isinstance(res, AssignResult):
            raise RPCError(f"{self.name} answered assign_accel with a {type(res).__name__}")
        return res

    def assign_full(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._call("assign_full", check_centroids(centroids, self.dim()), weights)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RemoteAssign({self.name!r})"


def connect_servers(
    addresses: Sequence[str],
    *,
    secret: bytes | None,
    wait_s: float = 300.0,
    timeout: float | None = DEFAULT_CALL_TIMEOUT,
    reduce: str = "auto",
) -> ShardedAssign:
    """Wait (at most ``wait_s`` in all) until every server answers, then stack them in order.

    An unreachable server is named in the RPCTimeout; servers whose dimensions
    differ are refused before any work.  ``reduce``: "plain" (the client adds every
    server's reply), "tree" (the servers reduce among themselves, :mod:`.tree`) or
    "auto" (the tree from ``tree.TREE_MIN_SERVERS`` servers on).
    """
    from distributed_ondisk.kmeans.tree import TreeAssign, choose_reduce

    deadline = time.monotonic() + wait_s
    shards = []
    try:
        for address in addresses:
            wait_ready(address, secret=secret, timeout=max(deadline - time.monotonic(), 0.1))
            shards.append(RemoteAssign(address, secret=secret, timeout=timeout))
        for s in shards:
            log.info("server %s: %s", s.name, s.describe())
        if choose_reduce(reduce, shards) == "tree":
            return TreeAssign(shards)
        return ShardedAssign(shards, parallel=True)
    except BaseException:
        for s in shards:
            s.close()
        raise


def serve_dataset(
    ds: Any,
    *,
    host: str,
    port: int,
    secret: bytes | None,
    insecure: bool = False,
    when_ready: str | None = None,
    name: str = "kmeans",
) -> None:
    """Serve ``ds`` until SIGTERM/SIGINT; once listening, write "host:port" to
    ``when_ready`` (atomically: a launcher that sees the file can use it).  The
    server also answers ``tree_assign`` (:mod:`.tree`), calling the other servers
    with the same ``secret``."""
    from distributed_ondisk.kmeans.tree import TreeNode

    server = Server(
        TreeNode(ds, secret),
        host=host,
        port=port,
        secret=secret,
        allow_insecure_loopback=insecure,
        name=name,
    ).start()
    address = server.address
    if host in ("", "0.0.0.0", "::"):
        import socket

        address = f"{socket.getfqdn()}:{server.port}"
    if when_ready:
        atomic_write_text(when_ready, address + "\n")
    log.info("k-means server ready at %s", address)
    server.serve_forever()
