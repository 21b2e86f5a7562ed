"""Load: two real search server processes under 16 concurrent clients with mixed
nprobe and batch sizes, for RELIABILITY_LOAD_SECONDS (default 20 s to keep CI
bounded; the issue's 60 s: RELIABILITY_LOAD_SECONDS=60).  No errors, every
answer equal to the single-client answer, latency percentiles printed.
(The k-means half of the load case, 4 servers with one restarted, is
test_crash_resume.py::test_kmeans_server_killed_mid_run_restarted_and_resumed_is_identical.)"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from reliability_helpers import NH, queries, search_server, servers

from distributed_ondisk.search.client import DistributedSearchClient
from distributed_ondisk.search.combined import CombinedIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLIENTS = 16
NPROBES = (1, 4, 8, 16, 32)
K = 10


def test_search_servers_under_16_concurrent_clients(reference, tmp_path, capsys):
    seconds = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "20"))
    q = queries()
    sf, root = reference.secret_file, reference.root
    procs = [search_server(root, [j], sf, tmp_path) for j in range(NH)]
    with servers(procs):
        addrs = [p.address for p in procs]
        with DistributedSearchClient(addrs, secret=reference.secret) as single:
            expected = {n: single.search(q, K, nprobe=n) for n in NPROBES}
        combined = CombinedIndex(
            [root / f"hslices/hslice_{j:04d}_of_{NH:04d}.index" for j in range(NH)]
        )
        for n in NPROBES:  # the single-client answers are the in-process index's
            _D0, I0 = combined.search(q, K, nprobe=n)
            np.testing.assert_array_equal(expected[n].I, I0)
        rss0 = [p.rss() for p in procs]
        errors: list[str] = []
        latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
        counts = [0] * CLIENTS
        start = threading.Barrier(CLIENTS)
        t_end = [0.0]

        def client(c: int) -> None:
            rs = np.random.default_rng(c)
            try:
                with DistributedSearchClient(addrs, secret=reference.secret) as dc:
                    start.wait()
                    while time.monotonic() < t_end[0]:
                        n = int(rs.choice(NPROBES))
                        rows = np.sort(
                            rs.choice(len(q), size=int(rs.integers(1, 65)), replace=False)
                        )
                        t0 = time.perf_counter()
                        res = dc.search(q[rows], K, nprobe=n)
                        latencies[c].append(time.perf_counter() - t0)
                        counts[c] += len(rows)
                        if res.partial or not (
                            np.array_equal(res.I, expected[n].I[rows])
                            and np.array_equal(res.D, expected[n].D[rows])
                        ):
                            errors.append(
                                f"client {c}: nprobe {n} rows {rows[:5]}... differ "
                                f"from the single-client answer (partial={res.partial})"
                            )
                            return
            except Exception as e:  # noqa: BLE001 -- any error fails the test, with its client
                errors.append(f"client {c}: {type(e).__name__}: {e}")

        t_end[0] = time.monotonic() + seconds + 30  # bounded even if the barrier stalls
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        t_end[0] = time.monotonic() + seconds
        for t in threads:
            t.join(seconds + 120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert errors == [], errors[:5]
        lat = np.array([x for per in latencies for x in per]) * 1000
        p50, p99 = np.percentile(lat, [50, 99])
        with capsys.disabled():  # reported in CI's output, not captured
            print(
                f"\nsearch load: {CLIENTS} clients x {seconds:.0f} s, {len(lat)} requests, "
                f"{sum(counts)} queries ({sum(counts) / seconds:.0f} QPS), latency ms: "
                f"p50 {p50:.1f}  p99 {p99:.1f}  max {lat.max():.1f} ({os.cpu_count()} cores)"
            )
        assert all(len(per) > 0 for per in latencies), "every client was served"
        assert all(p.alive() for p in procs)
        grown = [p.rss() - r for p, r in zip(procs, rss0)]
        assert max(grown) < 128 << 20, f"server RSS grew by {grown} under load"
