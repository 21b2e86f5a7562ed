#!/usr/bin/env python3
"""Sharded search side by side, one run, same shards and queries:

1. in process: CombinedIndex over all shards (read-only, memory-mapped);
2. ours: 2 search servers (one shard each) + the routed client (quantize once,
   send each server only its probed lists);
3. faiss.contrib.client_server as shipped (every query broadcast to every
   server, each server running the full search on its shard), once as shipped
   (Nagle on) and once with TCP_NODELAY added.

Prints QPS, recall@10, whether the ids and distances equal the in-process
ones, and payload bytes per query (queries, list ids and coarse distances
sent; ids and distances received; framing not counted).  faiss's servers
transform the queries with a batched sgemm whose rounding depends on the batch,
so their distances can differ in the last bits ("ids" = same ids only).

    python benchmarks/bench_search.py --quick             # small, a minute
    python benchmarks/bench_search.py --workdir /tmp/bench_search   # 2M x 96, nlist 16384

OMP_WAIT_POLICY defaults to PASSIVE for this process and the servers it starts
(faiss's idle OpenMP threads otherwise spin on the cores the other processes
need when they share a machine); pass --omp-wait-policy ACTIVE to compare.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # must precede the OpenMP runtime's start (faiss import)
    _pol = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--omp-wait-policy=")]
    os.environ["OMP_WAIT_POLICY"] = (
        _pol[0] if _pol else os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    )

import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distributed_ondisk.workdir import Workdir


def clustered_npy(path: Path, n: int, d: int, seed: int, nclusters: int = 1000) -> None:
    rs = np.random.RandomState(seed)
    centers = rs.randn(nclusters, d).astype(np.float32) * 4
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, 200_000):
        b = min(n, a + 200_000)
        out[a:b] = centers[rs.randint(nclusters, size=b - a)] + rs.randn(b - a, d)
    out.flush()
    del out


def build(wd: Workdir, n: int, d: int, nlist: int, nq: int) -> Path:
    """Data, centroids, trained index, 2 vslices, 2 hslices (stages skip what is done)."""
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice
    from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
    from distributed_ondisk.vectors import write_vectors

    wd.create()
    data, queries = wd.data(".npy"), wd.root / "queries.fvecs"
    if not data.exists():
        clustered_npy(data, n, d, seed=0)
        q = np.load(data, mmap_mode="r")
        rs = np.random.RandomState(1)
        write_vectors(
            queries,
            np.ascontiguousarray(
                q[rs.choice(n, nq, replace=False)] + rs.randn(nq, d).astype(np.float32)
            ),
        )
    if not wd.centroids.exists():
        x = np.load(data, mmap_mode="r")
        km = faiss.Kmeans(d, nlist, niter=10, seed=2, max_points_per_centroid=64)
        km.train(np.ascontiguousarray(x[: min(n, 64 * nlist)]))
        np.save(wd.centroids, km.centroids)
    make_trained_index(wd.centroids, data, wd.trained, TrainedIndexConfig(), 0, min(n, 100_000))
    for i in range(2):
        make_vslice(VsliceJob(wd.trained, data, wd.vslice(i, 2), nslice=2, slice_no=i))
    for j in range(2):
        merge_hslice(MergeJob([str(wd.vslice_dir)], wd.hslice(j, 2), nslice=2, slice_no=j))
    return queries


def sameness(D, I, ref) -> str:
    """'yes': ids and distances bit-identical to in process; 'ids': same ids only."""
    if not np.array_equal(I, ref[1]):
        return "NO"
    return "yes" if np.array_equal(D, ref[0]) else "ids"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def faiss_server(trained: str, shard: str, port: int, nodelay: bool) -> None:
    """Child process: faiss's reference server over one shard (as shipped, plus the numpy 2
    allowlist entry it needs to unpickle arrays at all, plus TCP_NODELAY if asked)."""
    import faiss.contrib.client_server as cs
    from faiss.contrib import rpc

    from distributed_ondisk.ondisk.hslice import open_hslices

    rpc.safe_modules.add("numpy._core.multiarray")
    index = open_hslices(trained, [shard])

    def handler(conn):
        if nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cs.SearchServer(conn, index)

    print("ready", flush=True)
    rpc.run_server(handler, port)


def start(args: list[str], procs: list) -> str:
    """Start a server process (kept in ``procs``); returns its first stdout line."""
    p = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        stderr=subprocess.DEVNULL,
        cwd=str(REPO),
    )
    procs.append(p)
    line = p.stdout.readline().strip()
    if not line:
        raise RuntimeError(f"server did not start: {args}")
    return line


def timed(fn, xq, k, nprobe, repeat):
    fn(xq[:100], k, nprobe)  # warm up (connections, page cache)
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(xq, k, nprobe)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description="sharded search benchmark")
    ap.add_argument("--quick", action="store_true", help="small data set (about a minute)")
    ap.add_argument("--workdir", help="work directory (kept; default: a temporary one)")
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--nlist", type=int, default=16384)
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", default="1,16,64")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per point (best kept)")
    ap.add_argument("--omp-wait-policy", default=None, help="OMP_WAIT_POLICY (default PASSIVE)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.nlist, args.nq, args.repeat = 50_000, 32, 256, 2000, 1

    from distributed_ondisk import evaluate as ev
    from distributed_ondisk.rpc import generate_secret, wait_ready, write_secret_file
    from distributed_ondisk.search import CombinedIndex, DistributedSearchClient
    from distributed_ondisk.vectors import read_vectors

    tmp = tempfile.TemporaryDirectory(prefix="bench_search_")
    wd = Workdir.from_arg(args.workdir or tmp.name)
    t0 = time.time()
    qpath = build(wd, args.n, args.d, args.nlist, args.nq)
    build_s = time.time() - t0
    xq = read_vectors(qpath)
    gt = ev.ground_truth(wd.data(), qpath, 100)
    nprobes = ev.parse_int_list(args.nprobe)
    shards = [str(p) for p in wd.hslices(2)]
    secret_file = Path(tmp.name) / "secret"
    secret = generate_secret()
    write_secret_file(secret_file, secret)

    ci = CombinedIndex(shards)
    rows, ref = [], {}
    procs: list[subprocess.Popen] = []
    try:
        for nprobe in nprobes:
            dt, (D, I) = timed(
                lambda x, k, p: ci.search(x, k, nprobe=p), xq, args.k, nprobe, args.repeat
            )
            ref[nprobe] = (D, I)
            rows.append(("in process", nprobe, len(xq) / dt, ev.recall_at(I, gt)[10], "ref", 0))
        addrs = [
            start(
                ["search_server.py", "--shards", s, "--secret-file", str(secret_file), "-q"], procs
            ).split()[-1]
            for s in shards
        ]
        for a in addrs:
            wait_ready(a, secret=secret, timeout=120)
        with DistributedSearchClient(addrs, secret=secret) as client:
            for nprobe in nprobes:
                dt, res = timed(
                    lambda x, k, p: client.search(x, k, nprobe=p), xq, args.k, nprobe, args.repeat
                )
                rows.append(
                    (
                        "ours, 2 servers",
                        nprobe,
                        len(xq) / dt,
                        ev.recall_at(res.I, gt)[10],
                        sameness(res.D, res.I, ref[nprobe]),
                        (res.bytes_sent + res.bytes_received) / len(xq),
                    )
                )
        for nodelay in (False, True):
            rows += bench_faiss(wd, shards, xq, gt, ref, nprobes, args, nodelay, procs)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        tmp.cleanup()
    print_table(args, build_s, ci, rows)
    return 0


def bench_faiss(wd, shards, xq, gt, ref, nprobes, args, nodelay, procs):
    from faiss.contrib import rpc

    from distributed_ondisk import evaluate as ev

    rpc.safe_modules.add("numpy._core.multiarray")
    ports = [free_port() for _ in shards]
    before = len(procs)
    for s, port in zip(shards, ports):
        start([__file__, "_faiss_server", str(wd.trained), s, str(port), str(int(nodelay))], procs)
    mine = procs[before:]
    client = _connect_faiss(ports)
    if nodelay:
        for sub in client.sub_indexes:
            sub.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    name = "faiss broadcast" + (" +NODELAY" if nodelay else " as shipped")
    rows = []
    for nprobe in nprobes:

        def run(x, k, p):
            client.set_nprobe(p)
            return client.search(x, k)

        dt, (D, I) = timed(run, xq, args.k, nprobe, args.repeat)
        sent = len(shards) * (xq.shape[1] * 4) + len(shards) * args.k * 12
        rows.append(
            (name, nprobe, len(xq) / dt, ev.recall_at(I, gt)[10], sameness(D, I, ref[nprobe]), sent)
        )
    for sub in client.sub_indexes:
        sub.sock.close()
    for p in mine:
        p.terminate()
        p.wait(30)
    return rows


def _connect_faiss(ports):
    import faiss.contrib.client_server as cs

    deadline = time.monotonic() + 120
    while True:
        try:
            return cs.ClientIndex([("127.0.0.1", p) for p in ports])
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def print_table(args, build_s, ci, rows) -> None:
    import distributed_ondisk

    print(
        f"# sharded search benchmark: {os.cpu_count()} cores, {platform.processor() or '?'}, "
        f"Python {platform.python_version()}, faiss {faiss.__version__}, numpy "
        f"{np.__version__}, distributed_ondisk {distributed_ondisk.__version__}"
    )
    print(
        f"# {ci.ntotal} x {args.d} vectors, IVF{ci.nlist}_HNSW32,SQ6 behind a random rotation, "
        f"2 shards by list range, efSearch {ci.default_ef}, {args.nq} queries in one batch, "
        f"k={args.k}, best of {args.repeat}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"all processes on this machine (build {build_s:.0f} s)"
    )
    print(
        f"{'variant':<26} {'nprobe':>6} {'QPS':>9} {'R@10':>6} {'identical':>9} "
        f"{'bytes/query':>11}"
    )
    for name, nprobe, qps, r10, same, b in rows:
        print(f"{name:<26} {nprobe:>6} {qps:>9.0f} {r10:>6.3f} {same:>9} {b:>11.0f}")
    by = {(r[0], r[1]): r[2] for r in rows}
    if ("ours, 2 servers", 16) in by:
        ours = by[("ours, 2 servers", 16)]
        print(
            f"# nprobe 16: ours / in process = {ours / by[('in process', 16)]:.2f} "
            f"(target >= 0.7); ours / faiss broadcast as shipped = "
            f"{ours / by[('faiss broadcast as shipped', 16)]:.2f}, with NODELAY = "
            f"{ours / by[('faiss broadcast +NODELAY', 16)]:.2f} (target >= 1.5)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_faiss_server":
        faiss_server(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
    else:
        sys.exit(main())
