"""A search server: one process serving *its own* subset of shards over RPC.

The server only scans inverted lists.  The client does the transform and the
coarse quantization once per query and sends each server just the queries
that probe its lists, with those list ids; so servers never repeat the
quantizer work (an HNSW search over all centroids per query, see
docs/FAISS_FACTS.md) and never see lists they do not hold.  Requests carry ``k`` and
the list ids (hence ``nprobe``); the server keeps no per-request state, so
concurrent clients with different parameters cannot disturb each other.

The shards are opened *before* the RPC server starts listening, so a server
that answers ``ping`` is ready to search.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.search.combined import CombinedIndex

log = logging.getLogger(__name__)

# What one request may make a server allocate: results are n * k * 12 bytes
# (float32 distance + int64 id), and k is the only size a peer states without
# sending its bytes, so it is bounded here, before anything is allocated.
MAX_K = 100_000
MAX_RESULT_BYTES = 1 << 30
PathLike = Union[str, "os.PathLike[str]"]


class SearchServer:
    """The object served over RPC: metadata, the trained index, list scans."""

    RPC_METHODS = ("info", "trained_index", "search_preassigned")

    def __init__(self, index: CombinedIndex, name: str = "") -> None:
        self.index = index
        self.name = name or ",".join(m.name for m in index.shards)

    def info(self) -> dict[str, Any]:
        ix = self.index
        return {
            "name": self.name,
            "fingerprint": ix.fingerprint,
            "nlist": ix.nlist,
            "d": ix.d,
            "metric_type": ix.metric_type,
            "ntotal": ix.ntotal,
            "ranges": [[m.l0, m.l1] for m in ix.shards],
            "shards": [m.name for m in ix.shards],
            "parts": [list(m.part) if m.part else None for m in ix.shards],
        }

    def trained_index(self) -> np.ndarray:
        """The trained index file (no lists) as uint8, for the client's coarse quantizer."""
        return np.frombuffer(self.index.trained_bytes(), dtype=np.uint8)

    def search_preassigned(
        self, xt: np.ndarray, k: int, Iq: np.ndarray, Dq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        check_request_size(xt, k)
        return self.index.search_preassigned(xt, k, Iq, Dq)


def check_request_size(xt: Any, k: Any) -> None:
    """Refuse a ``k`` or a result size beyond what one reply may hold."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    n = int(np.shape(xt)[0]) if np.ndim(xt) >= 1 else 0
    if n * int(k) * 12 > MAX_RESULT_BYTES:
        raise InputError(
            f"{n} queries x k={k} would need {n * int(k) * 12} bytes of results; "
            f"the limit per request is {MAX_RESULT_BYTES} (send fewer queries)"
        )


def open_search_server(
    shards: PathLike | Sequence[PathLike],
    *,
    trained: PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    secret: bytes | None,
    allow_insecure_loopback: bool = False,
    checksums: bool = False,
) -> Any:
    """Open the shards, then start serving them; returns the started ``rpc.Server``.

    Opening first is what makes ``ping`` mean "ready": nothing listens before
    every shard is mapped and checked.
    """
    from distributed_ondisk.rpc import Server

    index = CombinedIndex(shards, trained=trained, complete=False, checksums=checksums)
    obj = SearchServer(index)
    server = Server(
        obj,
        host=host,
        port=port,
        secret=secret,
        allow_insecure_loopback=allow_insecure_loopback,
        name=f"search server [{index.ranges_text()}]",
    )
    server.start()
    log.info(
        "search server on %s: lists %s of %d, %d vectors",
        server.address,
        index.ranges_text(),
        index.nlist,
        index.ntotal,
    )
    return server
