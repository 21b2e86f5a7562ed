"""The distributed query client: quantize once, route, merge.

For a batch of queries the client applies the transform and the HNSW coarse
quantizer itself (it holds the trained index, a few MB, without lists), then
sends each server only the queries that probe at least one of its lists, with
those list ids (in probe order, other probes compacted away) and the coarse
distances.  Servers scan and return their top-k; the client merges them with
faiss's k-way merge of sorted result lists, vectorised over all queries.

Large batches are cut into chunks and pipelined: while servers scan chunk i,
the client quantizes chunk i+1 (``depth`` chunks in flight, one connection per
server per slot, since an RPC connection runs one call at a time).

A server that fails mid-query raises an error naming it; with
``allow_partial=True`` the result is returned flagged ``partial`` with a mask
of the probes that were not searched, never silently with fewer lists.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from distributed_ondisk.errors import (
    ConnectionLost,
    IndexFileError,
    InputError,
    RemoteError,
    RPCError,
    RPCTimeout,
)
from distributed_ondisk.search.combined import TrainedSearcher
from distributed_ondisk.search.shardset import check_coverage

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

log = logging.getLogger(__name__)
DEFAULT_CHUNK_ROWS = 2048


@dataclass
class SearchResult:
    D: np.ndarray  # (n, k) distances
    I: np.ndarray  # (n, k) ids, -1 where fewer than k results
    probed: np.ndarray  # (n, nprobe) list ids the coarse quantizer chose
    missing: np.ndarray  # (n, nprobe) bool: probe not searched (failed server)
    failed_servers: list[str]
    bytes_sent: int
    bytes_received: int

    @property
    def partial(self) -> bool:
        return bool(self.failed_servers)

    def __iter__(self):  # D, I = client.search(...)
        return iter((self.D, self.I))


@dataclass
class _Route:
    server: int
    rows: np.ndarray
    Iq: np.ndarray
    Dq: np.ndarray


def route(owner: np.ndarray, Iq: np.ndarray, Dq: np.ndarray, nserver: int) -> list[_Route]:
    """Per server: the queries probing its lists and those probes, compacted, in order."""
    own = np.where(Iq >= 0, owner[np.maximum(Iq, 0)], -1)
    routes = []
    for s in range(nserver):
        m = own == s
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            continue
        ms = m[rows]
        width = int(ms.sum(axis=1).max())
        order = np.argsort(~ms, axis=1, kind="stable")[:, :width]  # owned probes first
        keep = np.take_along_axis(ms, order, axis=1)
        Iq_s = np.where(keep, np.take_along_axis(Iq[rows], order, axis=1), -1).astype(np.int32)
        Dq_s = np.take_along_axis(Dq[rows], order, axis=1)
        routes.append(_Route(s, rows, Iq_s, np.ascontiguousarray(Dq_s)))
    return routes


def _naming(e: BaseException, address: str) -> RPCError:
    """The same kind of error, saying which search server failed."""
    if isinstance(e, RemoteError):
        return RemoteError(e.remote_type, e.remote_message, e.remote_traceback, server=address)
    what = f"search server {address} failed during the query: {e}"
    for cls in (ConnectionLost, RPCTimeout):
        if isinstance(e, cls):
            return cls(what)
    return RPCError(what)


class DistributedSearchClient:
    """Search the shards served by ``addresses`` as one index.

    The servers must together hold every list exactly once, from one trained
    index; ``trained`` (a path) skips fetching the trained index from a server.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        secret: bytes | None,
        trained: str | None = None,
        timeout: float | None = 600,
        depth: int = 2,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        from distributed_ondisk.rpc import Client

        if not addresses:
            raise InputError("no search server address given")
        if depth < 1 or chunk_rows < 1:
            raise InputError(f"depth and chunk_rows must be >= 1, got {depth}, {chunk_rows}")
        self.addresses = list(addresses)
        self.depth, self.chunk_rows = depth, chunk_rows
        self._clients: list[list] = []
        try:
            for a in self.addresses:
                self._clients.append(
                    [Client(a, secret=secret, timeout=timeout) for _ in range(depth)]
                )
            infos = [c[0].call("info") for c in self._clients]
            self.searcher = self._load_trained(infos, trained)
        except BaseException:
            self.close()
            raise
        self.owner = np.full(self.searcher.nlist, -1, dtype=np.int32)
        for s, info in enumerate(infos):
            for l0, l1 in info["ranges"]:
                self.owner[l0:l1] = s
        self._pool = ThreadPoolExecutor(
            max(1, len(self.addresses) * depth), thread_name_prefix="search-client"
        )

    def _load_trained(self, infos: list[dict], trained: str | None) -> TrainedSearcher:
        from distributed_ondisk.ondisk.trained import (
            fingerprint_bytes,
            fingerprint_matches,
            load_trained_index,
        )

        fp = infos[0]["fingerprint"]
        for a, info in zip(self.addresses, infos):
            if info["fingerprint"] != fp:
                raise IndexFileError(
                    f"search servers {self.addresses[0]} and {a} serve shards "
                    "of different trained indexes"
                )
        nlist = int(infos[0]["nlist"])
        # servers name the split of each shard they hold (older ones do not): a shard no
        # server holds is then named ("h1 of 4, lists [16, 32)"), not only its lists
        splits = [p[1] for info in infos for p in (info.get("parts") or []) if p]
        check_coverage(
            [
                (f"{a} [{l0}, {l1})", l0, l1)
                for a, info in zip(self.addresses, infos)
                for l0, l1 in info["ranges"]
            ],
            nlist,
            complete=True,
            splits=splits,
        )
        if trained is not None:
            index, tfp = load_trained_index(trained)
            where = trained
        else:
            data = np.asarray(self._clients[0][0].call("trained_index"), dtype=np.uint8)
            tfp = fingerprint_bytes(data)
            try:
                index = faiss.deserialize_index(data)
            except RuntimeError as e:
                raise IndexFileError(
                    f"the trained index sent by {self.addresses[0]} is not " "a faiss index"
                ) from e
            where = f"the trained index sent by {self.addresses[0]}"
        if not fingerprint_matches(index, tfp, fp):
            raise IndexFileError(
                f"{where} (fingerprint {tfp[:12]}) is not the one the servers' "
                f"shards were built from (they need {fp})"
            )
        return TrainedSearcher(index, fp)

    @property
    def nlist(self) -> int:
        return self.searcher.nlist

    def _call(self, slot: int, r: _Route, xt: np.ndarray, k: int):
        return self._clients[r.server][slot].call("search_preassigned", xt[r.rows], k, r.Iq, r.Dq)

    def search(
        self,
        x: np.ndarray,
        k: int,
        *,
        nprobe: int,
        ef_search: int | None = None,
        allow_partial: bool = False,
    ) -> SearchResult:
        """k nearest neighbours of raw queries ``x`` over all servers."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        x = np.asarray(x)
        n = x.shape[0] if x.ndim == 2 else -1
        if n < 0 or x.shape[1] != self.searcher.d:
            raise InputError(f"queries must be an (n, {self.searcher.d}) array, got {x.shape}")
        if not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise InputError(f"nprobe must be a positive integer, got {nprobe!r}")
        keep_max = self.searcher.keep_max
        p = min(int(nprobe), self.nlist)
        D = np.empty((n, k), dtype=np.float32)
        I = np.empty((n, k), dtype=np.int64)
        probed = np.empty((n, p), dtype=np.int64)
        missing = np.zeros((n, p), dtype=bool)
        failed: dict[int, BaseException] = {}
        sent = received = 0
        pending: deque = deque()

        def finish() -> None:
            nonlocal received
            a, b, routes, futs = pending.popleft()
            Dall = np.full(
                (len(self.addresses), b - a, k), -np.inf if keep_max else np.inf, dtype=np.float32
            )
            Iall = np.full((len(self.addresses), b - a, k), -1, dtype=np.int64)
            for r, f in zip(routes, futs):
                try:
                    Ds, Is = f.result()
                except (RPCError, OSError) as e:
                    failed.setdefault(r.server, e)
                    missing[a:b][r.rows] |= (
                        self.owner[np.maximum(probed[a:b][r.rows], 0)] == r.server
                    ) & (probed[a:b][r.rows] >= 0)
                    continue
                Dall[r.server, r.rows] = Ds
                Iall[r.server, r.rows] = Is
                received += Ds.nbytes + Is.nbytes
            D[a:b], I[a:b] = faiss.merge_knn_results(Dall, Iall, keep_max=keep_max)

        for ci, a in enumerate(range(0, n, self.chunk_rows)):
            b = min(n, a + self.chunk_rows)
            if len(pending) == self.depth:
                finish()
            xt = self.searcher.transform(x[a:b], a)
            Dq, Iq = self.searcher.coarse(xt, nprobe, ef_search)
            probed[a:b] = Iq
            routes = route(self.owner, Iq, Dq, len(self.addresses))
            slot = ci % self.depth
            futs: list[Future] = [self._pool.submit(self._call, slot, r, xt, k) for r in routes]
            sent += sum(r.rows.size * xt.shape[1] * 4 + r.Iq.nbytes + r.Dq.nbytes for r in routes)
            pending.append((a, b, routes, futs))
        while pending:
            finish()
        if failed and not allow_partial:
            s, e = next(iter(failed.items()))
            raise _naming(e, self.addresses[s]) from e
        names = [self.addresses[s] for s in sorted(failed)]
        if names:
            log.warning(
                "partial results: server(s) %s failed; %d of %d queries lack lists",
                ", ".join(names),
                int(missing.any(axis=1).sum()),
                n,
            )
        return SearchResult(D, I, probed, missing, names, sent, received)

    def close(self) -> None:
        for cs in self._clients:
            for c in cs:
                c.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
