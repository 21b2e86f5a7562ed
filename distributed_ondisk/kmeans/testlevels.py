"""``distributed_kmeans.py --test 0,1,2,3``: the same clustering four ways.

0 = faiss's C++ ``faiss.Kmeans`` (the baseline), 1 = our loop in process,
2 = our loop over in-process shards, 3 = our loop over local server
processes on loopback.  Each prints its objective and time; the exit status
is 1 when a level of 1-3 ends more than :data:`TOLERANCE` away from level 0.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
from distributed_ondisk.kmeans.shards import ShardedAssign
from distributed_ondisk.kmeans.source import RowSource

log = logging.getLogger(__name__)
TOLERANCE = 0.005
#: Built-in data: clustered, with many more mixture components than k, so the
#: k-means objective is a stable function of the seed (a 0.5 % check is meaningful).
BUILTIN = {"n": 50_000, "d": 32, "n_clusters": 20_000, "k": 100}
LEVEL_NAMES = {
    0: "faiss.Kmeans (C++)",
    1: "loop, in process",
    2: "loop, in-process shards",
    3: "loop, local RPC servers",
}


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(t) for t in text.replace(" ", "").split(",") if t})
    except ValueError:
        levels = [-1]
    if not levels or any(lv not in LEVEL_NAMES for lv in levels):
        raise InputError(f"--test takes levels 0-3, comma separated (e.g. 0,1,2,3), got {text!r}")
    return levels


def run_test_levels(args: argparse.Namespace) -> int:
    from distributed_ondisk.kmeans.backend import build_dataset, choose_backend
    from distributed_ondisk.kmeans.local import LocalServers, slice_bounds
    from distributed_ondisk.kmeans.remote import connect_servers

    levels = parse_levels(args.test)
    backend = choose_backend(args.gpu, args.backend)
    with tempfile.TemporaryDirectory(prefix="kmeans-test-") as tmp:
        if args.indata:
            path = args.indata
            source = RowSource(path, args.i0, args.i1)
            if source.i0 != 0 or source.i1 != RowSource(path).n:
                raise InputError("--test uses the whole --indata file; drop --i0/--i1")
        else:
            from distributed_ondisk.datasets import make_clustered

            x = make_clustered(BUILTIN["n"], BUILTIN["d"], BUILTIN["n_clusters"], seed=args.seed)
            path = str(Path(tmp) / "builtin.npy")
            np.save(path, x)
            source = RowSource(x, name="built-in clustered data")
        k = args.k or BUILTIN["k"]
        cfg = KMeansConfig(k, args.niter, args.seed, args.max_points_per_centroid)
        cfg.validate(source.n)
        source.check_finite(1 << 16)
        n, ns = source.n, args.nservers

        def level0() -> float:
            import faiss

            km = faiss.Kmeans(
                source.d,
                k,
                niter=cfg.niter,
                seed=cfg.seed,
                max_points_per_centroid=cfg.max_points_per_centroid,
            )
            km.train(source.take(np.arange(n)))
            return float(km.obj[-1])

        def level1() -> float:
            return train_kmeans(build_dataset(backend, source, args.nt), cfg).objective

        def level2() -> float:
            # the same row ranges as level 3's servers
            shards = [
                build_dataset(backend, source.subrange(a, b), args.nt)
                for a, b in slice_bounds(n, ns)
            ]
            return train_kmeans(ShardedAssign(shards, parallel=False), cfg).objective

        def level3() -> float:
            with LocalServers(
                path,
                n,
                ns,
                nthreads=args.nt,
                gpu=args.gpu,
                insecure=args.insecure,
                extra_args=["--backend", args.backend],
            ) as servers:
                data = connect_servers(
                    servers.addresses,
                    secret=servers.secret,
                    wait_s=args.wait_servers,
                    timeout=args.timeout,
                )
                try:
                    return train_kmeans(data, cfg).objective
                finally:
                    data.close()

        runs: dict[int, Callable[[], float]] = {0: level0, 1: level1, 2: level2, 3: level3}
        print(
            f"k-means self-test on {source.describe()}: n={n} d={source.d} k={k} "
            f"niter={cfg.niter} seed={cfg.seed}",
            flush=True,
        )
        results = {}
        for lv in sorted(set(levels) | {0}):
            t0 = time.perf_counter()
            results[lv] = runs[lv]()
            dt = time.perf_counter() - t0
            rel = results[lv] / results[0] - 1
            note = " (reference, not requested)" if lv not in levels else ""
            print(
                f"level {lv} {LEVEL_NAMES[lv]:<26} objective={results[lv]:.8g} "
                f"vs level 0: {100 * rel:+.3f}% time={dt:.2f} s{note}",
                flush=True,
            )
    bad = [lv for lv in results if lv and abs(results[lv] / results[0] - 1) > TOLERANCE]
    if bad:
        print(
            f"FAILED: level(s) {bad} differ from level 0 by more than " f"{100 * TOLERANCE:.1f}%",
            flush=True,
        )
        return 1
    print("OK: all levels within 0.5% of level 0", flush=True)
    return 0
