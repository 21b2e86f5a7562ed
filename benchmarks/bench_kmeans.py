#!/usr/bin/env python3
"""Distributed k-means, side by side on the same data and seed, in one run.

CPU (default: 1M x 96 clustered, k=4096, 10 iterations, 2 servers x 1 thread):
  * ours: distributed_kmeans servers over our RPC (reduced assign_to);
  * faiss.Kmeans in process with the same total threads;
  * the reference: faiss.contrib.clustering.kmeans driving faiss.contrib.rpc
    servers (its unpickler allowlist widened for numpy 2, here only);
  * the bare compute bound: single-thread faiss flat search of each server's
    slice against the centroids, the slices in parallel processes.
--gpu (a CUDA machine with torch): the torch server's time per iteration next to
the bare GPU bound (blocked matmul + min alone on the same resident slice), and
its centroids after a few iterations vs a float64 torch-CPU reference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
from distributed_ondisk.kmeans.source import RowSource

REF_SERVER = r"""
import sys, numpy as np, faiss, faiss.contrib.rpc as rpc
from faiss.contrib.clustering import DatasetAssign
# its unpickler does not allow numpy 2's module names: array replies would never arrive
rpc.safe_modules |= {"numpy._core.multiarray", "numpy._core.numeric"}  # docs/FAISS_FACTS.md
faiss.omp_set_num_threads(1)
path, i0, i1, port, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ds = DatasetAssign(np.load(path, mmap_mode="r")[i0:i1])
class Handler(rpc.Server):
    def __init__(self, s):
        rpc.Server.__init__(self, s)
    def __getattr__(self, name):
        return getattr(ds, name)
rpc.run_server(Handler, port, report_to_file=ready)
"""


def versions() -> str:
    import faiss
    import scipy

    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"faiss {faiss.__version__}, scipy {scipy.__version__}"
    )


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


def run_reference(path, bounds, cfg, d):
    from faiss.contrib import rpc
    from faiss.contrib.clustering import kmeans

    rpc.safe_modules |= {"numpy._core.multiarray", "numpy._core.numeric"}
    procs, clients = [], []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for j, (a, b) in enumerate(bounds):
                port, ready = free_port(), Path(tmp) / f"ready{j}"
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            REF_SERVER,
                            path,
                            str(a),
                            str(b),
                            str(port),
                            str(ready),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                while not (ready.exists() and ready.read_text().strip()):
                    assert procs[-1].poll() is None, "reference server died"
                    time.sleep(0.05)
                clients.append(rpc.Client("127.0.0.1", port))
            data = RefDispatch(clients, [b - a for a, b in bounds], d)
            t0 = time.perf_counter()
            _, stats = kmeans(
                cfg.k, data, niter=cfg.niter, seed=cfg.seed, verbose=False, return_stats=True
            )
            wall = time.perf_counter() - t0
            per = cfg.niter * len(bounds)
            return wall, stats[-1]["obj"], data.sent / per, data.received / per
        finally:
            for p in procs:
                p.kill()
                p.wait()


def _bare_worker(args):
    path, a, b, centroids, niter = args
    import faiss

    faiss.omp_set_num_threads(1)
    x = np.ascontiguousarray(np.load(path, mmap_mode="r")[a:b])
    t0 = time.perf_counter()
    for _ in range(niter):
        faiss.knn(x, centroids, 1)
    return time.perf_counter() - t0


def run_bare(path, bounds, centroids, niter):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(bounds)) as pool:
        return max(pool.map(_bare_worker, [(path, a, b, centroids, niter) for a, b in bounds]))


def run_ours(path, n, cfg, nservers):
    from distributed_ondisk.kmeans.local import LocalServers
    from distributed_ondisk.kmeans.remote import connect_servers

    with LocalServers(path, n, nservers, nthreads=1, gpu=-2) as servers:
        data = connect_servers(servers.addresses, secret=servers.secret)
        t0 = time.perf_counter()
        res = train_kmeans(data, cfg)
        wall = time.perf_counter() - t0
        sent, received = zip(*(s.last_call_bytes for s in data.shards))  # one assign_to
        data.close()
    return wall, res.objective, max(sent), max(received)


def bench_cpu(args):
    import faiss

    n, d, k = args.n, args.d, args.k
    cfg = KMeansConfig(k, args.niter, args.seed, args.max_points_per_centroid)
    x = make_clustered(n, d, n_clusters=args.n_clusters, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-kmeans-") as tmp:
        path = str(Path(tmp) / "x.npy")
        np.save(path, x)
        bounds = [
            (int(a), int(b))
            for a, b in zip(
                *(lambda c: (c[:-1], c[1:]))(np.linspace(0, n, args.nservers + 1).astype(int))
            )
        ]
        rows = {}
        rows["ours (RPC, reduced)"] = run_ours(path, n, cfg, args.nservers)
        faiss.omp_set_num_threads(args.nservers)
        km = faiss.Kmeans(
            d,
            k,
            niter=args.niter,
            seed=args.seed,
            max_points_per_centroid=args.max_points_per_centroid,
        )
        t0 = time.perf_counter()
        km.train(x)
        rows[f"faiss.Kmeans ({args.nservers} threads)"] = (
            time.perf_counter() - t0,
            km.obj[-1],
            0,
            0,
        )
        rows["reference (contrib.rpc)"] = run_reference(path, bounds, cfg, d)
        bare = run_bare(path, bounds, km.centroids, args.niter)
        rows["bare bound (flat search)"] = (bare, float("nan"), 0, 0)
    limit = 8 * k * (d + 1) + 64 * 1024
    print(f"# bench_kmeans: {versions()}")
    print(
        f"# n={n} d={d} k={k} niter={args.niter} seed={args.seed} servers={args.nservers} x "
        f"1 thread; byte limit 8k(d+1)+64KiB = {limit}"
    )
    print(
        f"| {'method':<28} | wall s | s/iter | objective | vs faiss.Kmeans "
        f"| bytes/iter/server to server | from server |"
    )
    print("|" + "---|" * 7)
    ref_obj = km.obj[-1]
    for name, (wall, obj, sent, recv) in rows.items():
        rel = "" if obj != obj else f"{100 * (obj / ref_obj - 1):+.3f}%"
        print(
            f"| {name:<28} | {wall:6.2f} | {wall / args.niter:6.3f} | {obj:.6g} | {rel} "
            f"| {sent:,.0f} | {recv:,.0f} |"
        )
    ours = rows["ours (RPC, reduced)"]
    print(
        f"ours / bare bound = {ours[0] / bare:.3f} (target <= 1.1); ours / reference = "
        f"{ours[0] / rows['reference (contrib.rpc)'][0]:.3f} (<= 1.0); ours / faiss.Kmeans = "
        f"{ours[0] / rows[f'faiss.Kmeans ({args.nservers} threads)'][0]:.3f} (<= 0.8); "
        f"bytes ok: {max(ours[2], ours[3]) <= limit}"
    )


def bench_gpu(args):
    import torch

    from distributed_ondisk.kmeans.gpu import TorchAssign

    assert torch.cuda.is_available(), "--gpu needs torch with a CUDA device"
    x = make_clustered(args.n, args.d, n_clusters=args.n_clusters, seed=args.seed)
    ds = TorchAssign(RowSource(x), "cuda:0")
    c = x[np.random.default_rng(0).choice(args.n, args.k, replace=False)]
    ds.assign_to(c)  # makes the slice resident, warms up kernels
    ds.bare_search(c)
    times = {}
    for name, fn in (
        ("assign_to (matmul+min+sums, to host)", lambda: ds.assign_to(c)),
        ("bare bound (matmul+min)", lambda: ds.bare_search(c)),
    ):
        t0 = time.perf_counter()
        for _ in range(args.reps):
            fn()
        torch.cuda.synchronize()
        times[name] = (time.perf_counter() - t0) / args.reps
    cfg = KMeansConfig(args.k, args.check_iter, args.seed, args.max_points_per_centroid)
    t0 = time.perf_counter()
    r_gpu = train_kmeans(ds, cfg)
    t_gpu = time.perf_counter() - t0
    r_ref = train_kmeans(TorchAssign(RowSource(x), "cpu", dtype=torch.float64), cfg)
    print(
        f"# bench_kmeans --gpu: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, n={args.n} d={args.d} k={args.k}, fp32, TF32 off"
    )
    print("| step | ms per iteration |\n|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1000 * t:.1f} |")
    ratio = times["assign_to (matmul+min+sums, to host)"] / times["bare bound (matmul+min)"]
    print(
        f"| train_kmeans, {args.check_iter} iterations incl. setup, per iteration "
        f"| {1000 * t_gpu / args.check_iter:.1f} |"
    )
    print(f"assign_to / bare bound = {ratio:.3f} (target <= 1.3)")
    diff = np.abs(r_gpu.centroids - r_ref.centroids).max()
    rel = r_gpu.objective / r_ref.objective - 1
    print(
        f"after {args.check_iter} iterations vs float64 torch-CPU reference: max |centroid diff| "
        f"= {diff:.3g}, objective {r_gpu.objective:.8g} vs {r_ref.objective:.8g} "
        f"({100 * rel:+.5f}%, target within 0.1%)"
    )


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--gpu", action="store_true", help="GPU mode (torch + CUDA)")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=96)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n_clusters", type=int, default=20_000, help="mixture components")
    p.add_argument("--max_points_per_centroid", type=int, default=256)
    p.add_argument("--nservers", type=int, default=2)
    p.add_argument("--reps", type=int, default=10, help="--gpu: timed repetitions")
    p.add_argument("--check_iter", type=int, default=3, help="--gpu: iterations compared")
    args = p.parse_args()
    if args.quick:
        args.n, args.d, args.k, args.niter, args.n_clusters = 60_000, 32, 256, 4, 5000
    bench_gpu(args) if args.gpu else bench_cpu(args)


if __name__ == "__main__":
    main()
