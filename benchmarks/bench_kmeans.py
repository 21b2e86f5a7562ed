#!/usr/bin/env python3
"""Distributed k-means, side by side on the same data, seed and threads, in one run.

CPU (default: 1M x 96 clustered, k=4096, 4 iterations, 2 servers x 1 thread), the
contenders interleaved over ``--rounds`` rounds (order rotating), medians and spread:

* ours: distributed_kmeans servers over our RPC (reduced, exact accelerated assignment:
  bounds kept on the servers skip the distances that cannot change an assignment),
  1 thread each;
* ours (Lloyd): the same servers driven with plain Lloyd assignment (``--lloyd``);
  the accelerated run's objective is compared with it at every iteration, and the
  final assignments of the rows under both runs' centroids;
* faiss.Kmeans in this process with as many threads as there are servers;
* the reference: faiss.contrib.clustering.kmeans driving faiss.contrib.rpc servers.
  faiss.contrib.rpc serves each connection in a new thread, where OpenMP's thread
  count is the default (every core): the servers here set 1 thread in the thread
  that runs each call (otherwise the "1 thread" servers use every core), and its
  unpickler allowlist is widened for numpy 2 (it cannot return arrays otherwise);
* bounds, measured in the same run by one process per slice, the slices in parallel,
  each slice copied into RAM (as our servers hold it):
  - FLOP bound: numpy's single-thread sgemm of the slice against the centroids
    (the 2*n*d*k FLOPs of one iteration's distances, no argmin, no sums);
  - bare in-RAM search: single-thread faiss.knn(slice, centroids, 1).

Every contender's CPU seconds (its servers' and its driver's, from /proc) are
reported beside its wall time, so "1 thread" is checked, not assumed.

--gpu (CUDA + torch): the torch server's assign_to next to an independent bound, the
cuBLAS sgemm (torch.matmul) of the same shapes, and torch.cdist + argmin.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before the OpenMP runtime starts (faiss, numpy imports)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import benchlib as bl
import numpy as np

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
from distributed_ondisk.kmeans.source import RowSource
from distributed_ondisk.ranges import split_range

REF_SERVER = r"""
import sys, numpy as np, faiss, faiss.contrib.rpc as rpc
from faiss.contrib.clustering import DatasetAssign
# its unpickler does not allow numpy 2's module names: array replies would never arrive
rpc.safe_modules |= {"numpy._core.multiarray", "numpy._core.numeric"}
path, i0, i1, port, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ds = DatasetAssign(np.load(path, mmap_mode="r")[i0:i1])
class Handler(rpc.Server):
    def __init__(self, s):
        rpc.Server.__init__(self, s)
    def __getattr__(self, name):
        fn = getattr(ds, name)
        def call(*a, **kw):
            # OpenMP's thread count is per thread: set it in the connection's thread
            faiss.omp_set_num_threads(1)
            return fn(*a, **kw)
        return call
rpc.run_server(Handler, port, report_to_file=ready)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RefDispatch:
    """faiss.contrib's loop over several faiss.contrib.rpc servers (as the classic script)."""

    def __init__(self, clients, counts, d):
        from multiprocessing.pool import ThreadPool

        self.clients, self.counts, self.d = clients, counts, d
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.pool = ThreadPool(len(clients))
        self.sent = self.received = 0

    def count(self):
        return int(self.offsets[-1])

    def dim(self):
        return self.d

    def get_subset(self, idx):
        idx = np.asarray(idx)
        out = np.empty((len(idx), self.d), np.float32)
        for j, c in enumerate(self.clients):
            m = (idx >= self.offsets[j]) & (idx < self.offsets[j + 1])
            if m.any():
                out[m] = c.get_subset(idx[m] - self.offsets[j])
        return out

    def assign_to(self, centroids, weights=None):
        parts = self.pool.map(lambda c: c.assign_to(centroids), self.clients)
        self.sent += centroids.nbytes * len(self.clients)
        self.received += sum(I.nbytes + D.nbytes + s.nbytes for I, D, s in parts)
        I = np.concatenate([p[0] + 0 for p in parts])
        return I, np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts)


def _cpu(pids: list[int]) -> float:
    return sum(bl.proc_cpu_seconds(p) for p in pids)


def timed_with_cpu(fn, pids: list[int]) -> dict:
    """Run fn(); its wall time and the CPU seconds of this process and of ``pids``."""
    c0, s0, t0 = bl.self_cpu_seconds(), _cpu(pids), time.perf_counter()
    extra = fn()
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "driver_cpu_s": bl.self_cpu_seconds() - c0,
        "servers_cpu_s": _cpu(pids) - s0,
        **extra,
    }


class Reference:
    """faiss.contrib.rpc servers over the slices, started once for every round."""

    def __init__(self, path: str, bounds: list[tuple[int, int]], d: int) -> None:
        from faiss.contrib import rpc

        rpc.safe_modules |= {"numpy._core.multiarray", "numpy._core.numeric"}
        self.tmp = tempfile.TemporaryDirectory()
        self.procs, clients = [], []
        for j, (a, b) in enumerate(bounds):
            port, ready = free_port(), Path(self.tmp.name) / f"ready{j}"
            cmd = [sys.executable, "-c", REF_SERVER, path, str(a), str(b), str(port), str(ready)]
            self.procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            while not (ready.exists() and ready.read_text().strip()):
                assert self.procs[-1].poll() is None, "reference server died"
                time.sleep(0.05)
            clients.append(rpc.Client("127.0.0.1", port))
        self.data = RefDispatch(clients, [b - a for a, b in bounds], d)

    def run(self, cfg: KMeansConfig) -> dict:
        from faiss.contrib.clustering import kmeans

        self.data.sent = self.data.received = 0
        _, stats = kmeans(
            cfg.k, self.data, niter=cfg.niter, seed=cfg.seed, verbose=False, return_stats=True
        )
        per = cfg.niter * len(self.procs)
        return {
            "objective": float(stats[-1]["obj"]),
            "bytes_to_server": self.data.sent / per,
            "bytes_from_server": self.data.received / per,
        }

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.tmp.cleanup()


def bare_worker(path: str, a: int, b: int, cpath: str, niter: int) -> None:
    """One slice's bounds, in its own single-threaded process: prints one JSON line."""
    import faiss

    faiss.omp_set_num_threads(1)
    x = np.array(np.load(path, mmap_mode="r")[a:b])  # a copy in RAM, as our servers hold it
    c = np.load(cpath)
    ct = np.ascontiguousarray(c.T)
    block = 4096
    x[:block] @ ct  # warm up the BLAS
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(niter):
        for i in range(0, len(x), block):
            x[i : i + block] @ ct
    gemm, gemm_cpu = time.perf_counter() - t0, time.process_time() - c0
    faiss.knn(x[:block], c, 1)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(niter):
        faiss.knn(x, c, 1)
    knn, knn_cpu = time.perf_counter() - t0, time.process_time() - c0
    flops = 2.0 * len(x) * x.shape[1] * len(c) * niter
    print(
        json.dumps(
            {
                "gemm_s": gemm,
                "gemm_cpu_s": gemm_cpu,
                "gflops": flops / gemm / 1e9,
                "knn_s": knn,
                "knn_cpu_s": knn_cpu,
            }
        )
    )


def run_bounds(path: str, bounds, centroids: np.ndarray, niter: int, tmp: Path) -> dict:
    """Both bounds, one single-threaded process per slice, the slices in parallel."""
    cpath = str(tmp / "centroids.npy")
    np.save(cpath, centroids)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--bare-worker", path, str(a), str(b), cpath, str(niter)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for a, b in bounds
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0, f"bound worker failed (rc {p.returncode})"
        outs.append(json.loads(out.strip().splitlines()[-1]))
    # the slices run in parallel: the bound is the slowest slice
    return {
        "flop_s": max(o["gemm_s"] for o in outs),
        "flop_cpu_s": sum(o["gemm_cpu_s"] for o in outs),
        "gflops_per_thread": float(np.median([o["gflops"] for o in outs])),
        "knn_s": max(o["knn_s"] for o in outs),
        "knn_cpu_s": sum(o["knn_cpu_s"] for o in outs),
    }


def load_data(args) -> np.ndarray:
    """The clustered synthetic mixture, or the bundled GloVe vectors (shuffled: they are
    sorted by word frequency, and each server must see alike rows)."""
    if args.data == "glove":
        from distributed_ondisk.launch.prepare import bundled_glove_path

        x = np.load(bundled_glove_path()).astype(np.float32)
        x = np.ascontiguousarray(x[np.random.default_rng(0).permutation(len(x))])
        x = x[: args.n] if args.n < len(x) else x
        args.n, args.d = x.shape
        return x
    return make_clustered(args.n, args.d, n_clusters=args.n_clusters, seed=args.seed)


def agreement(x: np.ndarray, a: np.ndarray, b: np.ndarray, threads: int) -> float:
    """Fraction of rows whose nearest centroid has the same id under ``a`` and ``b``."""
    import faiss

    faiss.omp_set_num_threads(threads)
    _, ia = faiss.knn(x, a, 1)
    _, ib = faiss.knn(x, b, 1)
    return float((ia == ib).mean())


def bench_cpu(args, res: dict) -> None:
    import faiss

    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers

    x = load_data(args)
    n, d, k, ns = args.n, args.d, args.k, args.nservers
    cfg = KMeansConfig(k, args.niter, args.seed, args.max_points_per_centroid)
    lloyd_cfg = KMeansConfig(k, args.niter, args.seed, args.max_points_per_centroid, lloyd=True)
    bounds = [split_range(n, ns, j) for j in range(ns)]
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-kmeans-") as tmpname:
        tmp = Path(tmpname)
        path = str(tmp / "x.npy")
        np.save(path, x)
        ref = Reference(path, bounds, d)
        try:
            with LocalServers(path, n, ns, nthreads=1, gpu=-2) as servers:
                data = connect_servers(servers.addresses, secret=servers.secret)
                ours_pids = [p.pid for p in servers.procs]
                last_centroids: list[np.ndarray] = []
                final: dict[str, np.ndarray] = {}

                def ours_with(c: KMeansConfig, name: str) -> dict:
                    r = train_kmeans(data, c)
                    final[name] = r.centroids
                    last_centroids[:] = [r.centroids]
                    sent, received = zip(*(s.last_call_bytes for s in data.shards))
                    return {
                        "objective": float(r.objective),
                        "objectives": [float(s["obj"]) for s in r.stats],
                        "recomputed": [float(s["recomputed"]) for s in r.stats],
                        "bytes_to_server": max(sent),
                        "bytes_from_server": max(received),
                    }

                def ours() -> dict:
                    return ours_with(cfg, "ours")

                def ours_lloyd() -> dict:
                    return ours_with(lloyd_cfg, "ours (Lloyd)")

                def fkmeans() -> dict:
                    faiss.omp_set_num_threads(ns)
                    km = faiss.Kmeans(
                        d, k, niter=cfg.niter, seed=cfg.seed,
                        max_points_per_centroid=cfg.max_points_per_centroid,
                    )  # fmt: skip
                    km.train(x)
                    return {"objective": float(km.obj[-1])}

                def bounds_run() -> dict:
                    c = last_centroids[0] if last_centroids else x[:k]
                    t0 = time.perf_counter()
                    b = run_bounds(path, bounds, c, cfg.niter, tmp)
                    return {"wall_s": time.perf_counter() - t0, **b}

                contenders = {
                    "ours": lambda: timed_with_cpu(ours, ours_pids),
                    "ours (Lloyd)": lambda: timed_with_cpu(ours_lloyd, ours_pids),
                    "faiss.Kmeans": lambda: timed_with_cpu(fkmeans, []),
                    "reference": lambda: timed_with_cpu(lambda: ref.run(cfg), ref.pids()),
                    "bounds": bounds_run,
                }
                if args.no_others:  # the accelerated path against Lloyd and the bounds only
                    del contenders["faiss.Kmeans"], contenders["reference"]
                samples = bl.interleave(contenders, args.rounds)
                data.close()
        finally:
            ref.close()
    res["agreement"] = agreement(x, final["ours"], final["ours (Lloyd)"], ns)
    report_cpu(args, res, samples)


def report_cpu(args, res: dict, samples: dict[str, list[dict]]) -> None:
    ns, niter = args.nservers, args.niter
    flops_iter = 2.0 * args.n * args.d * args.k
    wall = {
        name: bl.summary([s["wall_s"] for s in v])
        for name, v in samples.items()
        if name != "bounds"
    }
    b = samples["bounds"]
    flop = bl.summary([s["flop_s"] for s in b])
    knn = bl.summary([s["knn_s"] for s in b])
    gflops = bl.summary([s["gflops_per_thread"] for s in b])
    work = {
        "ours": (
            f"{ns} servers (our RPC, reduced assign_accel: sums on the servers, exact "
            "bounds skip distances) x 1 thread"
        ),
        "ours (Lloyd)": f"the same {ns} servers, plain Lloyd (--lloyd) x 1 thread",
        "faiss.Kmeans": f"faiss.Kmeans in process, {ns} threads",
        "reference": (
            f"faiss.contrib.clustering.kmeans + {ns} faiss.contrib.rpc servers x 1 thread "
            "(set in each call's thread)"
        ),
    }
    ref_name = "faiss.Kmeans" if "faiss.Kmeans" in samples else "ours (Lloyd)"
    ref_obj = float(np.median([s["objective"] for s in samples[ref_name]]))
    for name, v in samples.items():
        if name == "bounds":
            continue
        cpu = [s["driver_cpu_s"] + s["servers_cpu_s"] for s in v]
        res["rows"].append(
            {
                "name": name,
                "work": work[name],
                "threads": ns,
                "wall_s": wall[name],
                "cpu_s": bl.summary(cpu),
                "servers_cpu_s": bl.summary([s["servers_cpu_s"] for s in v]),
                "driver_cpu_s": bl.summary([s["driver_cpu_s"] for s in v]),
                "objective": float(np.median([s["objective"] for s in v])),
                "bytes_to_server": v[-1].get("bytes_to_server"),
                "bytes_from_server": v[-1].get("bytes_from_server"),
            }
        )
    res["bounds"] += [
        {
            "name": "FLOP bound",
            "work": (
                f"numpy sgemm of each slice (4096-row blocks) against the k centroids, 1 thread "
                f"per slice, slices in parallel: {flops_iter / 1e9:.1f} GFLOP per iteration"
            ),
            "wall_s": flop,
            "gflops_per_thread": gflops,
        },
        {
            "name": "bare in-RAM search",
            "work": "faiss.knn(slice in RAM, centroids, 1), 1 thread per slice, in parallel",
            "wall_s": knn,
            "cpu_s": bl.summary([s["knn_cpu_s"] for s in b]),
        },
    ]
    m = {name: w["median"] for name, w in wall.items()}
    bl.ratio(res, "ours / FLOP bound", m["ours"] / flop["median"], "time; >= 1, lower is better")
    bl.ratio(res, "ours / bare in-RAM search", m["ours"] / knn["median"], "time; lower is better")
    bl.ratio(res, "ours / ours (Lloyd)", m["ours"] / m["ours (Lloyd)"], "time; < 1: bounds win")
    bl.ratio(
        res, "ours (Lloyd) / bare in-RAM search", m["ours (Lloyd)"] / knn["median"], "time; >= 1"
    )
    if "reference" in m:
        bl.ratio(res, "ours / reference", m["ours"] / m["reference"], "time; < 1: ours faster")
        bl.ratio(res, "reference / FLOP bound", m["reference"] / flop["median"], "time; >= 1")
    if "faiss.Kmeans" in m:
        bl.ratio(res, "ours / faiss.Kmeans", m["ours"] / m["faiss.Kmeans"], "time; < 1: faster")
        bl.ratio(res, "faiss.Kmeans / FLOP bound", m["faiss.Kmeans"] / flop["median"], "time")
    # the accelerated run against Lloyd's, iteration by iteration (same seed, same servers)
    acc, lloyd = samples["ours"][-1], samples["ours (Lloyd)"][-1]
    rel = [abs(a / b - 1) for a, b in zip(acc["objectives"], lloyd["objectives"])]
    res["accelerated"] = {
        "objective_max_rel_diff": max(rel) if rel else 0.0,
        "objective_rel_diff_per_iteration": rel,
        "recomputed_per_iteration": acc["recomputed"],
        "recomputed_mean": float(np.mean(acc["recomputed"])) if acc["recomputed"] else 1.0,
        "assignment_agreement": res.get("agreement"),
    }
    bl.ratio(res, "objective: max |ours / Lloyd - 1| over iterations", max(rel, default=0), "")
    bl.ratio(res, "rows with the same centroid (ours vs Lloyd)", res.get("agreement", 1.0), "")
    bl.ratio(res, "rows recomputed per iteration (mean)", res["accelerated"]["recomputed_mean"], "")
    limit = 8 * args.k * (args.d + 1) + 64 * 1024
    rows = []
    for r in res["rows"]:
        w = r["wall_s"]
        rel = 100 * (r["objective"] / ref_obj - 1)
        rows.append(
            [
                r["name"],
                r["work"],
                bl.fmt_spread(w, 2),
                bl.fmt(w["median"] / niter, 3),
                bl.fmt(r["cpu_s"]["median"] / w["median"], 2),
                bl.fmt(flop["median"] / w["median"], 2),
                f"{r['objective']:.6g} ({rel:+.4f} %)",
                bl.fmt(r["bytes_to_server"]) if r["bytes_to_server"] is not None else "—",
                bl.fmt(r["bytes_from_server"]) if r["bytes_from_server"] is not None else "—",
            ]
        )
    for bd in res["bounds"]:
        w = bd["wall_s"]
        rows.append(
            [bd["name"], bd["work"], bl.fmt_spread(w, 2), bl.fmt(w["median"] / niter, 3),
             "1 per slice", bl.fmt(flop["median"] / w["median"], 2), "—", "—", "—"]
        )  # fmt: skip
    res["tables"].append(
        bl.table(
            f"k-means, {args.data} {args.n} x {args.d}, k = {args.k}, {niter} iterations, "
            f"median (min–max) of {args.rounds} interleaved rounds",
            [
                "contender",
                "work and threads",
                "wall s",
                "s / iteration",
                "CPU s / wall s",
                "fraction of FLOP bound",
                f"objective (vs {ref_name})",
                "bytes/iter/server to",
                "from",
            ],
            rows,
        )
    )
    res["notes"] += [
        (
            f"FLOP bound: {gflops['median']:.1f} GFLOP/s per thread (numpy sgemm, single "
            f"thread, {args.nservers} slices at once), {flops_iter / 1e9:.1f} GFLOP per "
            "iteration; 'fraction of FLOP bound' = bound time / contender time (1 = every "
            "cycle in sgemm)."
        ),
        (
            "CPU s / wall s is the contender's CPU time (its servers' and its driver's, from "
            f"/proc) over its wall time: {args.nservers} means {args.nservers} cores busy, as "
            "intended."
        ),
        (
            "A server's reply to our assign_to is k*(d+1)*8 bytes (float64 sums and counts) "
            f"whatever its rows (limit 8k(d+1)+64 KiB = {limit}); the reference's grows with "
            "the rows (12 B each)."
        ),
    ]


def bench_gpu(args, res: dict) -> None:
    try:
        import torch
    except ImportError:
        res["skipped"] = "--gpu needs torch"
        return
    if not torch.cuda.is_available():
        res["skipped"] = "--gpu: no CUDA device (torch.cuda.is_available() is False)"
        return
    from distributed_ondisk.kmeans.gpu import TorchAssign

    torch.backends.cuda.matmul.allow_tf32 = False
    x = make_clustered(args.n, args.d, n_clusters=args.n_clusters, seed=args.seed)
    ds = TorchAssign(RowSource(x), "cuda:0")
    c = x[np.random.default_rng(0).choice(args.n, args.k, replace=False)]
    ds.assign_to(c)  # makes the slice resident, warms up kernels
    xt, ct = torch.from_numpy(x).cuda(), torch.from_numpy(c).cuda()
    block = 65536

    def sgemm():
        for i in range(0, len(xt), block):
            xt[i : i + block] @ ct.T

    def cdist():
        for i in range(0, len(xt), block):
            torch.cdist(xt[i : i + block], ct).argmin(1)

    def ours():
        ds.assign_to(c)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.reps

    s = bl.interleave(
        {"ours": lambda: timed(ours), "sgemm": lambda: timed(sgemm), "cdist": lambda: timed(cdist)},
        args.rounds,
    )
    m = {k: bl.summary(v) for k, v in s.items()}
    flops = 2.0 * args.n * args.d * args.k
    res["rows"].append({"name": "torch server assign_to", "s_per_iter": m["ours"]})
    res["bounds"] += [
        {"name": "cuBLAS sgemm (torch.matmul), same shapes", "s_per_iter": m["sgemm"],
         "tflops": flops / m["sgemm"]["median"] / 1e12},
        {"name": "torch.cdist + argmin", "s_per_iter": m["cdist"]},
    ]  # fmt: skip
    bl.ratio(res, "assign_to / sgemm bound", m["ours"]["median"] / m["sgemm"]["median"], "time")
    bl.ratio(res, "assign_to / cdist+argmin", m["ours"]["median"] / m["cdist"]["median"], "time")
    res["tables"].append(
        bl.table(
            f"GPU k-means step, {torch.cuda.get_device_name(0)}, {args.n} x {args.d}, "
            f"k = {args.k}, fp32, TF32 off",
            ["step", "ms per iteration", "fraction of sgemm bound"],
            [
                [name, bl.fmt_spread(v, 1, 1000), bl.fmt(m["sgemm"]["median"] / v["median"], 2)]
                for name, v in (
                    ("ours: torch server assign_to (matmul+min+sums, to host)", m["ours"]),
                    ("bound: cuBLAS sgemm of the same shapes", m["sgemm"]),
                    ("independent: torch.cdist + argmin", m["cdist"]),
                )
            ],
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="200k x 64, k=1024 (a minute)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (tests)")
    p.add_argument("--gpu", action="store_true", help="GPU mode (torch + CUDA)")
    p.add_argument("--json", help="write the result here")
    p.add_argument(
        "--data",
        choices=("synthetic", "glove"),
        default="synthetic",
        help="clustered synthetic rows, or the bundled GloVe vectors (400k x 50)",
    )
    p.add_argument(
        "--no-others",
        action="store_true",
        help="ours (accelerated), ours (Lloyd) and the bounds only: no faiss.Kmeans, no reference",
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=96)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--niter", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n_clusters", type=int, default=20_000, help="mixture components")
    p.add_argument("--max_points_per_centroid", type=int, default=256)
    p.add_argument("--nservers", type=int, default=2)
    p.add_argument("--reps", type=int, default=10, help="--gpu: timed repetitions per round")
    p.add_argument("--bare-worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_worker:
        a = args.bare_worker
        return bare_worker(a[0], int(a[1]), int(a[2]), a[3], int(a[4]))
    if args.quick:
        args.n, args.d, args.k, args.n_clusters = 200_000, 64, 1024, 5000
    if args.smoke:
        args.n, args.d, args.k, args.n_clusters, args.niter, args.rounds = 4000, 16, 32, 100, 2, 1
        args.reps = 2
    config = {k: v for k, v in vars(args).items() if k not in ("json", "bare_worker")}
    res = bl.result("kmeans_gpu" if args.gpu else "kmeans", bl.mode_of(args), config)
    bench_gpu(args, res) if args.gpu else bench_cpu(args, res)
    bl.emit(res, args.json)


if __name__ == "__main__":
    main()
