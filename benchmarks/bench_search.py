#!/usr/bin/env python3
"""Sharded search side by side, one run, same shards and queries, on real and hard data.

Data sets (``--datasets``): ``glove`` (the bundled GloVe 6B 50-d, rows normalized so
that L2 ranks as angular distance, as ann-benchmarks' glove-angular; queries are
held-out rows, never indexed) and ``hard`` (i.i.d. Gaussian, d=24, fresh queries:
recall spans a wide range across nprobe).  Per data set: trained index
``RR<d>,IVF<nlist>_HNSW32,SQ6``, 2 hslices by list range, and per nprobe the variants,
interleaved over ``--rounds`` rounds (order rotating), each timed on one batch of
every query:

1. bound: the in-process scan of the same lists with their codes in RAM (same
   transform and coarse step as 2, the lists copied to ``ArrayInvertedLists``);
2. in process: CombinedIndex over both shards (read-only, memory-mapped);
3. ours: 2 search servers (one shard each) + the routed client (quantize once,
   send each server only its probed lists);
4. faiss.contrib.client_server broadcast (every query to every server, each
   running the full search on its shard), with TCP_NODELAY (and as shipped, Nagle
   on, at one nprobe).

Reported per point: QPS median (min-max), 1-recall@1, 1-recall@10, 10-recall@10
(intersection, as ann-benchmarks), CPU seconds of every process involved, and a
modelled QPS with each process on its own machine (queries / the busiest
process's CPU seconds: network free, a ceiling); single-query latency
percentiles at one nprobe.  Every process shares this machine's cores.

    python benchmarks/bench_search.py --smoke      # seconds
    python benchmarks/bench_search.py --quick      # GloVe 400k + hard 200k
    python benchmarks/bench_search.py --workdir /tmp/bench_search   # + hard 1M x 24

OMP_WAIT_POLICY defaults to PASSIVE for this process and the servers it starts
(faiss's idle OpenMP threads otherwise spin on the cores the other processes
need when they share a machine).
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


def make_dataset(name: str, n: int, nq: int, root: Path) -> tuple[Path, Path, str]:
    """(database .npy, queries .fvecs, description); queries never in the database."""
    from distributed_ondisk.vectors import write_vectors

    root.mkdir(parents=True, exist_ok=True)
    data, queries = root / "data.npy", root / "queries.fvecs"
    if name == "glove":
        from distributed_ondisk.launch.prepare import bundled_glove_path

        x = np.load(bundled_glove_path()).astype(np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x = x[np.random.default_rng(0).permutation(len(x))]  # sorted by word frequency
        if n:
            x = x[: n + nq]
        q, x = x[:nq], x[nq:]
        desc = f"GloVe 6B 50-d normalized (L2 = angular), {len(x)} rows, {nq} held-out queries"
    else:
        rs = np.random.default_rng(0)
        x = rs.standard_normal((n, 24), dtype=np.float32)
        q = rs.standard_normal((nq, 24), dtype=np.float32)
        desc = f"hard: i.i.d. Gaussian {n} x 24, {nq} fresh queries"
    np.save(data, np.ascontiguousarray(x))
    write_vectors(queries, np.ascontiguousarray(q))
    return data, queries, desc


def build(wd: Workdir, data: Path, nlist: int) -> None:
    """Centroids, trained index, 2 vslices, 2 hslices."""
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice
    from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice

    wd.create()
    x = np.load(data, mmap_mode="r")
    n = len(x)
    km = faiss.Kmeans(x.shape[1], nlist, niter=10, seed=2, max_points_per_centroid=64)
    km.train(np.ascontiguousarray(x[: min(n, 64 * nlist)]))
    np.save(wd.centroids, km.centroids)
    make_trained_index(wd.centroids, data, wd.trained, TrainedIndexConfig(), 0, min(n, 100_000))
    for i in range(2):
        make_vslice(VsliceJob(wd.trained, data, wd.vslice(i, 2), nslice=2, slice_no=i))
    for j in range(2):
        merge_hslice(MergeJob([str(wd.vslice_dir)], wd.hslice(j, 2), nslice=2, slice_no=j))


class InRam:
    """The bound: the same transform and coarse step as CombinedIndex, the scan over
    the same lists copied into RAM."""

    def __init__(self, ci) -> None:
        self.ci = ci
        self.index = ci.to_ram()  # held: the IVF below is owned by it
        self.ivf = faiss.extract_index_ivf(self.index)

    def search(self, x: np.ndarray, k: int, nprobe: int):
        xt = self.ci.transform(x)
        Dq, Iq = self.ci.coarse(xt, nprobe, None)
        n = len(xt)
        D = np.empty((n, k), dtype=np.float32)
        I = np.empty((n, k), dtype=np.int64)
        params = faiss.SearchParametersIVF(nprobe=nprobe, max_codes=0)
        self.ivf.search_preassigned_c(
            n, faiss.swig_ptr(xt), k, faiss.swig_ptr(np.ascontiguousarray(Iq, dtype=np.int64)),
            faiss.swig_ptr(np.ascontiguousarray(Dq, dtype=np.float32)), faiss.swig_ptr(D),
            faiss.swig_ptr(I), False, params,
        )  # fmt: skip
        return D, I


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


def recalls(I: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """1-recall@1, 1-recall@10 (the true nearest among the first r) and 10-recall@10
    (|first 10 ∩ true 10| / 10, as ann-benchmarks)."""
    from distributed_ondisk import evaluate as ev

    r = ev.recall_at(I, gt, (1, 10))
    return {"1-R@1": r[1], "1-R@10": r[10], "10-R@10": ev.intersection_recall(I, gt, 10)}


def timed_batch(fn, xq, k, nprobe, pids) -> dict:
    """One batch of every query: wall time, and CPU seconds of this process and ``pids``."""
    import benchlib as bl

    c0 = time.process_time()
    s0 = [bl.proc_cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()
    out = fn(xq, k, nprobe)
    wall = time.perf_counter() - t0
    client = time.process_time() - c0
    servers = [bl.proc_cpu_seconds(p) - a for p, a in zip(pids, s0)]
    return {"wall_s": wall, "client_cpu_s": client, "servers_cpu_s": servers, "out": out}


def latencies(fn, xq, k, nprobe, nq: int) -> dict:
    """Single-query latency percentiles (ms), as ann-benchmarks times queries."""
    fn(xq[:1], k, nprobe)
    ts = []
    for i in range(min(nq, len(xq))):
        t0 = time.perf_counter()
        fn(xq[i : i + 1], k, nprobe)
        ts.append(time.perf_counter() - t0)
    p50, p95, p99 = np.percentile(np.array(ts) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "n": len(ts)}


def run_dataset(name: str, args, tmp: Path, res: dict) -> None:
    import benchlib as bl

    from distributed_ondisk import evaluate as ev
    from distributed_ondisk.rpc import generate_secret, wait_ready, write_secret_file
    from distributed_ondisk.search import CombinedIndex, DistributedSearchClient
    from distributed_ondisk.vectors import read_vectors

    n = args.n_glove if name == "glove" else args.n_hard
    wd = Workdir.from_arg(tmp / name)
    t0 = time.time()
    data, qpath, desc = make_dataset(name, n, args.nq, tmp / f"{name}_data")
    build(wd, data, args.nlist if name == "hard" or not args.nlist_glove else args.nlist_glove)
    build_s = time.time() - t0
    xq = read_vectors(qpath)
    gt = ev.ground_truth(data, qpath, 100)
    shards = [str(p) for p in wd.hslices(2)]
    secret_file = tmp / f"{name}_secret"
    secret = generate_secret()
    write_secret_file(secret_file, secret)
    ci = CombinedIndex(shards)
    ram = InRam(ci)
    procs: list[subprocess.Popen] = []
    variants = {}
    try:
        variants["bound: in process, lists in RAM"] = (
            lambda x, k, p: ram.search(x, k, p),
            [],
            "same transform + coarse step, RAM lists",
        )
        variants["in process (on-disk shards)"] = (
            lambda x, k, p: ci.search(x, k, nprobe=p),
            [],
            "CombinedIndex, memory-mapped",
        )
        before = len(procs)
        addrs = [
            start(["search_server.py", "--shards", s, "--secret-file", str(secret_file), "-q"],
                  procs).split()[-1]
            for s in shards
        ]  # fmt: skip
        ours_pids = [p.pid for p in procs[before:]]
        for a in addrs:
            wait_ready(a, secret=secret, timeout=120)
        client = DistributedSearchClient(addrs, secret=secret)

        def ours(x, k, p):
            r = client.search(x, k, nprobe=p)
            return r.D, r.I

        variants["ours, 2 servers (routed)"] = (ours, ours_pids, "client quantizes once")
        fclient, fpids = start_faiss(wd, shards, procs, nodelay=True)

        def broadcast(x, k, p, c=fclient):
            c.set_nprobe(p)
            return c.search(x, k)

        variants["faiss broadcast, TCP_NODELAY"] = (broadcast, fpids, "every server full search")
        fclient0, fpids0 = start_faiss(wd, shards, procs, nodelay=False)

        def shipped(x, k, p, c=fclient0):
            c.set_nprobe(p)
            return c.search(x, k)

        points = []
        for nprobe in args.nprobes:
            vs = dict(variants)
            if nprobe == args.latency_nprobe:
                vs["faiss broadcast, as shipped"] = (shipped, fpids0, "Nagle on")
            for fn, _, _ in vs.values():
                fn(xq[:100], args.k, nprobe)  # warm up: connections, page cache
            runs = bl.interleave(
                {
                    v: (lambda fn=fn, pids=pids, p=nprobe: timed_batch(fn, xq, args.k, p, pids))
                    for v, (fn, pids, _) in vs.items()
                },
                args.rounds,
            )
            ref = runs["in process (on-disk shards)"][-1]["out"]
            for v, rs in runs.items():
                D, I = rs[-1]["out"]
                qps = bl.summary([len(xq) / r["wall_s"] for r in rs])
                cpu_total = [r["client_cpu_s"] + sum(r["servers_cpu_s"]) for r in rs]
                busiest = [max([r["client_cpu_s"], *r["servers_cpu_s"]]) for r in rs]
                points.append({
                    "variant": v, "nprobe": nprobe, "work": vs[v][2], "qps": qps,
                    "recall": recalls(I, gt), "identical": sameness(D, I, ref),
                    "cpu_ms_per_1000q": bl.summary([1e6 * c / len(xq) for c in cpu_total]),
                    "cores_used": bl.summary([c / r["wall_s"] for c, r in zip(cpu_total, rs)]),
                    "modelled_qps_one_machine_per_process": bl.summary(
                        [len(xq) / max(b, 1e-9) for b in busiest]),
                    "processes": 1 + len(vs[v][1]),
                })  # fmt: skip
        lat = {}
        for v in ("in process (on-disk shards)", "ours, 2 servers (routed)",
                  "faiss broadcast, TCP_NODELAY"):  # fmt: skip
            lat[v] = latencies(variants[v][0], xq, args.k, args.latency_nprobe, args.nlat)
        client.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    report_dataset(res, name, desc, ci, args, build_s, points, lat)


def report_dataset(res, name, desc, ci, args, build_s, points, lat) -> None:
    import benchlib as bl

    res["rows"] += [{"dataset": name, **p} for p in points]
    res["bounds"] += [{"dataset": name, **p} for p in points if p["variant"].startswith("bound")]
    by = {(p["variant"], p["nprobe"]): p for p in points}
    rows = []
    for p in points:
        bp = by[("bound: in process, lists in RAM", p["nprobe"])]
        b = bp["qps"]["median"]
        # The per-core bound: the bound's CPU per query over the contender's.  On shared
        # cores the scheduler gives a contender with more runnable threads (3 processes)
        # a larger share of the machine than the one-process bound, so only the CPU per
        # query compares the same work at the same resources.
        per_core = bp["cpu_ms_per_1000q"]["median"] / p["cpu_ms_per_1000q"]["median"]
        r = p["recall"]
        rows.append([
            p["variant"], str(p["nprobe"]), bl.fmt_spread(p["qps"]),
            bl.fmt(p["qps"]["median"] / b, 2), bl.fmt(p["cores_used"]["median"], 2),
            bl.fmt(p["cpu_ms_per_1000q"]["median"]), bl.fmt(per_core, 2),
            f"{r['1-R@1']:.3f}", f"{r['1-R@10']:.3f}", f"{r['10-R@10']:.3f}", p["identical"],
            bl.fmt(p["modelled_qps_one_machine_per_process"]["median"]),
        ])  # fmt: skip
    res["tables"].append(bl.table(
        f"search, {desc}; IVF{ci.nlist}_HNSW32,SQ6 behind a random rotation, 2 shards by list "
        f"range, efSearch {ci.default_ef}, k = {args.k}, one batch of {args.nq} queries, "
        f"median (min–max) of {args.rounds} interleaved rounds (build {build_s:.0f} s)",
        ["variant", "nprobe", "QPS", "QPS / bound QPS", "cores used (CPU s / wall s)",
         "CPU ms / 1000 q (all processes)", "fraction of per-core bound", "1-R@1", "1-R@10",
         "10-R@10", "results vs in process", "modelled QPS, a machine per process"],
        rows))  # fmt: skip
    res["tables"].append(bl.table(
        f"single-query latency, {name}, nprobe {args.latency_nprobe}, {args.nlat} queries one "
        "at a time",
        ["variant", "p50 ms", "p95 ms", "p99 ms"],
        [[v, f"{x['p50_ms']:.2f}", f"{x['p95_ms']:.2f}", f"{x['p99_ms']:.2f}"]
         for v, x in lat.items()]))  # fmt: skip
    res.setdefault("latency", {})[name] = lat
    for nprobe in args.nprobes:
        o = by[("ours, 2 servers (routed)", nprobe)]
        ip = by[("in process (on-disk shards)", nprobe)]
        bd = by[("bound: in process, lists in RAM", nprobe)]
        fb = by[("faiss broadcast, TCP_NODELAY", nprobe)]
        m = {k: v["qps"]["median"] for k, v in (("o", o), ("ip", ip), ("bd", bd), ("fb", fb))}
        bl.ratio(res, f"{name} nprobe {nprobe}: ours / in-RAM bound, per core-second",
                 bd["cpu_ms_per_1000q"]["median"] / o["cpu_ms_per_1000q"]["median"],
                 "queries per CPU second, fraction of the bound's (<= 1)")  # fmt: skip
        bl.ratio(res, f"{name} nprobe {nprobe}: ours / in-RAM bound", m["o"] / m["bd"],
                 "QPS, all processes on one machine; not a fraction of a bound when ours "
                 "uses more cores (see the cores column)")  # fmt: skip
        bl.ratio(res, f"{name} nprobe {nprobe}: in process / in-RAM bound", m["ip"] / m["bd"],
                 "QPS")  # fmt: skip
        bl.ratio(res, f"{name} nprobe {nprobe}: ours / faiss broadcast (NODELAY)",
                 m["o"] / m["fb"], "QPS, all processes on one machine")  # fmt: skip
        bl.ratio(res, f"{name} nprobe {nprobe}: ours / broadcast, modelled one machine each",
                 o["modelled_qps_one_machine_per_process"]["median"]
                 / fb["modelled_qps_one_machine_per_process"]["median"],
                 "modelled QPS (busiest process's CPU)")  # fmt: skip


def main() -> int:
    import benchlib as bl

    ap = argparse.ArgumentParser(description="sharded search benchmark")
    ap.add_argument("--quick", action="store_true", help="GloVe 400k + hard 200k x 24")
    ap.add_argument("--smoke", action="store_true", help="tiny, seconds (tests)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--workdir", help="work directory (kept; default: a temporary one)")
    ap.add_argument("--datasets", default="glove,hard")
    ap.add_argument("--n_glove", type=int, default=0, help="GloVe rows (0: all)")
    ap.add_argument("--n_hard", type=int, default=1_000_000)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--nlist_glove", type=int, default=0, help="default: --nlist")
    ap.add_argument("--nq", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", default="1,16,64")
    ap.add_argument("--latency_nprobe", type=int, default=16)
    ap.add_argument("--nlat", type=int, default=1000, help="single-query latency samples")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--omp-wait-policy", default=None, help="OMP_WAIT_POLICY (default PASSIVE)")
    args = ap.parse_args()
    if args.quick:
        args.n_hard, args.nlist, args.nq, args.nlat = 200_000, 1024, 2000, 300
    if args.smoke:
        args.n_glove, args.n_hard, args.nlist, args.nq, args.nlat = 6000, 6000, 64, 200, 20
        args.rounds, args.nprobe, args.latency_nprobe = 1, "16", 16
    from distributed_ondisk import evaluate as ev

    args.nprobes = ev.parse_int_list(args.nprobe)
    if args.latency_nprobe not in args.nprobes:
        args.nprobes.append(args.latency_nprobe)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}
    res = bl.result("search", bl.mode_of(args), config)
    tmp = tempfile.TemporaryDirectory(prefix="bench_search_")
    root = Path(args.workdir or tmp.name)
    try:
        for name in args.datasets.split(","):
            run_dataset(name, args, root, res)
    finally:
        tmp.cleanup()
    res["notes"] += [
        (
            "All processes (client, servers) share this machine's cores, so a distributed "
            "variant's QPS here mostly measures its total CPU; the 'modelled' column divides "
            "the queries by the busiest process's CPU seconds: the QPS with one machine per "
            "process and a free network (a ceiling). Broadcast servers each redo the transform "
            "and the HNSW coarse search; the routed client does them once."
        ),
        (
            "The bound is the in-RAM scan (same lists, same transform and coarse step, codes "
            "in RAM instead of memory-mapped from the shard files), in one process with "
            "faiss's OpenMP threads = the cores. 'fraction of per-core bound' = the bound's "
            "CPU per query over the variant's (all its processes): the same work at the same "
            "CPU, <= 1 up to noise. 'QPS / bound QPS' is not such a fraction: on shared "
            "cores a variant with more processes gets a larger share of the machine (the "
            "cores column), and the routed client's coarse step overlaps the servers' scans."
        ),
        (
            "Recall is measured against exact k-NN (brute force, L2); 10-R@10 is the "
            "intersection measure of ann-benchmarks."
        ),
    ]
    bl.emit(res, args.json)
    return 0


def start_faiss(wd, shards, procs, nodelay: bool):
    """faiss.contrib.client_server servers (one per shard) and a client to them."""
    from faiss.contrib import rpc

    rpc.safe_modules.add("numpy._core.multiarray")
    ports = [free_port() for _ in shards]
    before = len(procs)
    for s, port in zip(shards, ports):
        start([__file__, "_faiss_server", str(wd.trained), s, str(port), str(int(nodelay))], procs)
    client = _connect_faiss(ports)
    if nodelay:
        for sub in client.sub_indexes:
            sub.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, [p.pid for p in procs[before:]]


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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_faiss_server":
        faiss_server(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")
    else:
        sys.exit(main())
