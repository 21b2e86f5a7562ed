"""The servers' reduction tree: one reply into the client whatever the number of
servers, the same centroids as one server, a failing server named."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.errors import InputError, RPCError
from distributed_ondisk.kmeans.base import AssignResult
from distributed_ondisk.kmeans.cpu import CPUAssign
from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
from distributed_ondisk.kmeans.source import RowSource
from distributed_ondisk.kmeans.tree import TreeAssign, choose_reduce, tree_plan

pytest.importorskip("faiss", reason="the CPU k-means servers need faiss")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tree_plan_shape() -> None:
    plan = tree_plan([f"h{i}" for i in range(6)])
    assert plan == ["h0", [["h1", [["h3", []], ["h4", []]]], ["h2", [["h5", []]]]]]
    assert tree_plan(["a"]) == ["a", []]


def test_choose_reduce() -> None:
    class S:
        def __init__(self, tree: bool) -> None:
            self.tree, self.name = tree, "h:1"

    assert choose_reduce("auto", [S(True)] * 2) == "plain"
    assert choose_reduce("auto", [S(True)] * 8) == "tree"
    assert choose_reduce("auto", [S(True)] * 7 + [S(False)]) == "plain"
    with pytest.raises(InputError, match="h:1"):
        choose_reduce("tree", [S(False)])
    with pytest.raises(InputError, match="reduce must be"):
        choose_reduce("ring", [S(True)])


def test_eight_servers_one_reply_into_the_client(tmp_path) -> None:
    """k = 65536, d = 96, 8 servers over loopback: per iteration the client sends the
    centroids once and receives at most 1.1x what one server's plain reply is."""
    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers, message_bytes

    k, d, n = 65536, 96, 66000
    x = make_clustered(n, d, n_clusters=2000, seed=8)
    np.save(tmp_path / "x.npy", x)
    cfg = KMeansConfig(k, niter=2, seed=4, lloyd=True)
    one = train_kmeans(CPUAssign(RowSource(x)), cfg)
    with LocalServers(str(tmp_path / "x.npy"), n, 8) as servers:
        ds = connect_servers(servers.addresses, secret=servers.secret, timeout=600)
        try:
            assert isinstance(ds, TreeAssign)
            tree = train_kmeans(ds, cfg)
            s0, r0 = ds.client_bytes()
            ds.assign_to(tree.centroids)  # one more iteration's call, all servers
            sent, received = (b - a for a, b in zip((s0, r0), ds.client_bytes()))
        finally:
            ds.close()
    assert tree.stats[0]["obj"] == pytest.approx(one.stats[0]["obj"], rel=1e-6)
    np.testing.assert_allclose(tree.centroids, one.centroids, rtol=1e-5, atol=1e-5)
    reply = message_bytes(AssignResult.empty(k, d))  # one server's plain reply
    assert reply >= 8 * k * (d + 1)  # float64 sums and int64 counts
    assert received <= 1.1 * reply, (received, reply)
    assert sent <= 1.1 * 4 * k * d + 64 * 1024, sent  # the centroids, once


def test_tree_failure_names_the_server(tmp_path) -> None:
    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers

    x = make_clustered(4000, 8, n_clusters=50, seed=1)
    np.save(tmp_path / "x.npy", x)
    cfg = KMeansConfig(16, niter=3, seed=2)
    ref = train_kmeans(CPUAssign(RowSource(x)), cfg)
    with LocalServers(str(tmp_path / "x.npy"), len(x), 3) as servers:
        ds = connect_servers(servers.addresses, secret=servers.secret, timeout=60, reduce="tree")
        try:
            res = train_kmeans(ds, cfg)
            np.testing.assert_allclose(res.centroids, ref.centroids, rtol=1e-5, atol=1e-5)
            servers.procs[2].kill()
            servers.procs[2].wait()
            with pytest.raises(RPCError, match=servers.addresses[2].replace("[", r"\[")):
                train_kmeans(ds, cfg)
        finally:
            ds.close()
