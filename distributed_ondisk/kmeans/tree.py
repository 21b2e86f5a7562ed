"""k-means reduction tree: the client talks to one server, the servers to each other.

With ``n`` servers the plain path sends the centroids ``n`` times per iteration
and receives ``n`` replies of ``k * (d + 1)`` float64: at k = 1M, d = 96 and 20
servers, 15.5 GB into the client per iteration.  Here the servers form a tree
(server ``i``'s children are ``FANOUT * i + 1 ..``, in shard order): the client
sends the centroids once, to the root, with the tree; every server forwards them
to its children over the same authenticated RPC (same secret), assigns its own
rows, adds its children's float64 sums to its own in a fixed order, and answers
its parent.  Every reply carries float32 sums (each server accumulates its rows
and its children's replies in float64; a centroid is float32 anyway, and each
level adds one float32 rounding), so the client receives
``k * (4 d + 8)`` bytes per iteration whatever the number of servers: less than
one plain reply.  The plain path stays the default below ``TREE_MIN_SERVERS``,
where the extra hop costs more than it saves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from distributed_ondisk.errors import InputError, RPCError
from distributed_ondisk.kmeans.base import AssignResult, accelerated, check_centroids
from distributed_ondisk.kmeans.shards import ShardedAssign

log = logging.getLogger(__name__)

FANOUT = 2
#: ``reduce="auto"`` uses the tree from this many servers on.
TREE_MIN_SERVERS = 8
REDUCE_MODES = ("auto", "plain", "tree")


def tree_plan(addresses: Sequence[str], fanout: int = FANOUT, root: int = 0) -> list:
    """``[address, [subtree, ...]]`` of the heap-shaped tree rooted at ``root``."""
    kids = range(fanout * root + 1, min(fanout * root + 1 + fanout, len(addresses)))
    return [addresses[root], [tree_plan(addresses, fanout, j) for j in kids]]


def check_plan(plan: Any, depth: int = 0) -> list[tuple[str, Any]]:
    """The children ``[(address, subplan)]`` of a plan received over RPC, checked."""
    if depth > 64 or not isinstance(plan, (list, tuple)):
        raise InputError("tree_assign: the tree must be a list of [address, children]")
    out = []
    for sub in plan:
        if not (isinstance(sub, (list, tuple)) and len(sub) == 2 and isinstance(sub[0], str)):
            raise InputError("tree_assign: each child must be [address, children]")
        check_plan(sub[1], depth + 1)
        out.append((sub[0], sub[1]))
    return out


class TreeNode:
    """What a k-means server exposes: its dataset's methods, plus ``tree_assign``.

    ``secret`` authenticates this server to its children (the cluster's one secret).
    """

    def __init__(self, ds: Any, secret: bytes | None, timeout: float | None = None) -> None:
        from distributed_ondisk.kmeans.remote import DEFAULT_CALL_TIMEOUT

        self.ds = ds
        self.secret = secret
        self.timeout = DEFAULT_CALL_TIMEOUT if timeout is None else timeout
        self.RPC_METHODS = (*ds.RPC_METHODS, "tree_assign")
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(FANOUT * 2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ds, name)

    def describe(self) -> dict:
        return {**self.ds.describe(), "tree": True}

    def _child(self, address: str) -> Any:
        from distributed_ondisk.kmeans.remote import RemoteAssign

        with self._lock:
            if address not in self._clients:
                self._clients[address] = RemoteAssign(
                    address, secret=self.secret, timeout=self.timeout
                )
            return self._clients[address]

    def _call_child(self, address: str, plan: Any, c: np.ndarray, accel: bool) -> AssignResult:
        try:
            res = self._child(address)._call("tree_assign", c, plan, accel, True)
        except Exception as e:  # whatever failed below, the error names that server
            with self._lock:
                dead = self._clients.pop(address, None)
            if dead is not None:
                dead.close()
            raise RPCError(f"k-means server {address}: {e}") from e
        if not isinstance(res, AssignResult):
            raise RPCError(f"{address} answered tree_assign with a {type(res).__name__}")
        return res

    def tree_assign(
        self, centroids: np.ndarray, children: Any, accel: bool = True, wire32: bool = True
    ) -> AssignResult:
        """This server's reduced assignment plus its subtree's (children called first,
        in parallel with our own rows); float32 sums when ``wire32``."""
        c = check_centroids(centroids, self.ds.dim())
        kids = check_plan(children)
        futures = [self._pool.submit(self._call_child, a, p, c, bool(accel)) for a, p in kids]
        if accel and accelerated(self.ds):
            own = self.ds.assign_accel(c)
        else:
            own = self.ds.assign_to(c)
        for f in futures:  # in tree order: the sum is reproducible
            own.add(f.result())
        if wire32:
            own.sums = own.sums.astype(np.float32)
        return own


class TreeAssign(ShardedAssign):
    """Remote shards whose assignments go through the servers' reduction tree.

    Everything but the per-iteration assignment (count, select, get_subset, the
    faiss-compatible calls) is the plain sharded path.
    """

    def __init__(self, shards: Sequence[Any], fanout: int = FANOUT) -> None:
        super().__init__(shards, parallel=True)
        self.plan = tree_plan([s.name for s in self.shards], fanout)
        self.root = self.shards[0]
        log.info("k-means reduction tree over %d servers, fanout %d", len(self.shards), fanout)

    def describe(self) -> dict:
        return {**super().describe(), "reduce": "tree"}

    def _tree(self, centroids: np.ndarray, accel: bool) -> AssignResult:
        c = check_centroids(centroids, self.d)
        res = self.root._call("tree_assign", c, self.plan[1], accel, True)
        if not isinstance(res, AssignResult):
            raise RPCError(f"{self.root.name} answered tree_assign with a {type(res).__name__}")
        return res

    def assign_to(self, centroids: np.ndarray, weights: np.ndarray | None = None) -> AssignResult:
        if weights is not None:  # weights are per row: the plain path splits them
            return super().assign_to(centroids, weights)
        return self._tree(centroids, False)

    def assign_accel(
        self, centroids: np.ndarray, weights: np.ndarray | None = None
    ) -> AssignResult:
        if weights is not None:
            return super().assign_accel(centroids, weights)
        return self._tree(centroids, True)

    def client_bytes(self) -> tuple[int, int]:
        """(sent, received) by this client so far, all servers together."""
        return sum(s.bytes_sent for s in self.shards), sum(s.bytes_received for s in self.shards)


def choose_reduce(mode: str, shards: Sequence[Any]) -> str:
    """ "plain" or "tree" for ``mode`` ("auto": tree from TREE_MIN_SERVERS servers that
    all serve tree_assign)."""
    if mode not in REDUCE_MODES:
        raise InputError(f"reduce must be one of {', '.join(REDUCE_MODES)}, got {mode!r}")
    can = all(getattr(s, "tree", False) for s in shards)
    if mode == "tree" and not can:
        old = [s.name for s in shards if not getattr(s, "tree", False)]
        raise InputError(f"reduce='tree': servers {', '.join(old)} do not serve tree_assign")
    if mode == "auto":
        return "tree" if can and len(shards) >= TREE_MIN_SERVERS else "plain"
    return mode
