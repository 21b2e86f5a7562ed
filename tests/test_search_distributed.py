"""Distributed search over real server processes: identical to the in-process combined
index, per-request parameters, authentication, failures named (or flagged partial)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from build_helpers import clustered
from test_search_support import ServerProcess, build_shards

from distributed_ondisk.errors import AuthenticationError, ConnectionLost, IndexFileError, RPCError
from distributed_ondisk.rpc import generate_secret, write_secret_file
from distributed_ondisk.search.client import DistributedSearchClient, route
from distributed_ondisk.search.combined import CombinedIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_wd")
    wd, _ = build_shards(root, nh=(3,))
    secret_file = root / "secret"
    secret = generate_secret()
    write_secret_file(secret_file, secret)
    return wd, secret_file, secret, clustered(500, 32, seed=11)


@pytest.fixture(scope="module")
def servers(built):
    """Three servers: shard 0, shard 1, shard 2 (each only its own part)."""
    wd, secret_file, secret, _ = built
    procs = []
    try:
        for j in range(3):
            procs.append(ServerProcess([wd.hslice(j, 3)], secret_file))
        for p in procs:
            p.wait(secret)
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def combined(built):
    return CombinedIndex(built[0].hslices(3))


@pytest.mark.parametrize("nprobe,k,chunk", [(1, 10, 2048), (8, 10, 64), (64, 100, 100)])
def test_same_ids_and_distances_as_in_process(built, servers, combined, nprobe, k, chunk):
    _, _, secret, q = built
    with DistributedSearchClient(
        [s.address for s in servers], secret=secret, chunk_rows=chunk
    ) as client:
        res = client.search(q, k, nprobe=nprobe)
    D0, I0 = combined.search(q, k, nprobe=nprobe)
    np.testing.assert_array_equal(res.I, I0)
    np.testing.assert_array_equal(res.D, D0)
    assert not res.partial and not res.missing.any()
    assert res.bytes_sent > 0 and res.bytes_received > 0


def test_two_servers_one_holding_two_shards(built, combined):
    wd, secret_file, secret, q = built
    a = ServerProcess([wd.hslice(0, 3), wd.hslice(2, 3)], secret_file)
    b = ServerProcess([wd.hslice(1, 3)], secret_file)
    try:
        a.wait(secret), b.wait(secret)
        with DistributedSearchClient([a.address, b.address], secret=secret) as client:
            D, I = client.search(q, 10, nprobe=16, ef_search=32)
        D0, I0 = combined.search(q, 10, nprobe=16, ef_search=32)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_array_equal(D, D0)
    finally:
        a.stop(), b.stop()


def test_routing_sends_only_owned_lists():
    owner = np.array([0, 0, 1, 1, 2, 2], dtype=np.int32)
    Iq = np.array([[0, 2, 1, -1], [4, 5, 3, 2]])
    Dq = np.arange(8, dtype=np.float32).reshape(2, 4)
    routes = {r.server: r for r in route(owner, Iq, Dq, 3)}
    assert routes[0].rows.tolist() == [0] and routes[0].Iq.tolist() == [[0, 1]]
    assert routes[0].Dq.tolist() == [[0.0, 2.0]]
    assert routes[1].rows.tolist() == [0, 1]
    assert routes[1].Iq.tolist() == [[2, -1], [3, 2]]
    assert routes[2].rows.tolist() == [1] and routes[2].Iq.tolist() == [[4, 5]]


def test_concurrent_clients_get_their_own_nprobe(built, servers, combined):
    _, _, secret, q = built
    expected = {p: combined.search(q, 10, nprobe=p) for p in (1, 32)}
    errors: list = []

    def run(nprobe: int) -> None:
        try:
            with DistributedSearchClient(
                [s.address for s in servers], secret=secret, chunk_rows=128
            ) as client:
                for _ in range(4):
                    D, I = client.search(q, 10, nprobe=nprobe)
                    np.testing.assert_array_equal(I, expected[nprobe][1])
                    np.testing.assert_array_equal(D, expected[nprobe][0])
        except BaseException as e:  # noqa: BLE001 - any failure, reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in (1, 32, 1, 32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


def test_wrong_secret_is_refused(servers):
    with pytest.raises(AuthenticationError):
        DistributedSearchClient([servers[0].address], secret=generate_secret())


def test_servers_must_cover_every_list(built, servers):
    _, _, secret, _ = built
    with pytest.raises(IndexFileError, match=r"lists \[21, 42\) of 64"):
        DistributedSearchClient([servers[0].address, servers[2].address], secret=secret)
    with pytest.raises(IndexFileError, match="overlap"):
        DistributedSearchClient([s.address for s in servers] + [servers[1].address], secret=secret)


def test_server_killed_mid_query_is_named_or_flagged_partial(built, combined):
    wd, secret_file, secret, q = built
    procs = [ServerProcess([wd.hslice(j, 3)], secret_file) for j in range(3)]
    try:
        for p in procs:
            p.wait(secret)
        dead = procs[1]
        client = DistributedSearchClient([p.address for p in procs], secret=secret, chunk_rows=50)
        first_done = threading.Event()
        outcome: list = []

        def loop() -> None:
            try:
                while True:
                    client.search(np.tile(q, (4, 1)), 10, nprobe=64)
                    first_done.set()
            except BaseException as e:  # noqa: BLE001 - what ended the loop, checked below
                outcome.append(e)
                first_done.set()

        t = threading.Thread(target=loop)
        t.start()
        assert first_done.wait(120)
        dead.kill()
        t.join(120)
        assert len(outcome) == 1 and isinstance(outcome[0], RPCError), outcome
        assert dead.address in str(outcome[0])
        with pytest.raises(ConnectionLost, match=dead.address):
            client.search(q, 10, nprobe=16)

        res = client.search(q, 10, nprobe=16, allow_partial=True)
        assert res.partial and res.failed_servers == [dead.address]
        lost = (client.owner[res.probed] == 1) & (res.probed >= 0)
        np.testing.assert_array_equal(res.missing, lost)
        assert lost.any()
        # what was returned is exactly the search of the lists that were still served
        xt = combined.transform(q)
        Dq, Iq = combined.coarse(xt, 16)
        D0, I0 = combined.search_preassigned(xt, 10, np.where(lost, -1, Iq), Dq)
        np.testing.assert_array_equal(res.I, I0)
        np.testing.assert_array_equal(res.D, D0)
        client.close()
    finally:
        for p in procs:
            p.stop()
