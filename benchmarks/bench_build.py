#!/usr/bin/env python3
"""Benchmark of the build stages, side by side in one run:

* add rate of make_index_vslice (read blocks from disk, row-exact transform,
  add, write + manifest) vs a bare ``index.add`` of the same rows in RAM (target >= 0.9x);
* merge throughput of merge_to_ondisk vs faiss.contrib.ondisk.merge_ondisk on
  the same vslices (target >= 1.0x), and vs a sequential dd-style write of the
  same byte count on the same disk (target >= 0.5x), all including fsync;
* peak RSS (VmHWM) of each merge, each run in its own process.

The merge inputs are the real vslices plus ``--merge_copies - 1`` copies of
them with ids shifted past the data (real codes and list sizes, more bytes: a
merge of 160 MB takes a tenth of a second, too short to time on a noisy
machine).  The add rate is measured ``--repeat`` times and each merge
``--merge_repeat`` times, the methods interleaved, and the best run of each
is kept (medians are printed too: this machine's disk and neighbours vary).

    python benchmarks/bench_build.py --quick            # seconds, smoke test
    python benchmarks/bench_build.py --dir /var/tmp     # 2M x 96, IVF16384 (~6 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def vm_hwm() -> int:
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024


def read_through(paths: list[Path]) -> None:
    """Read files once so that they sit in the page cache."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass


def drop_caches() -> bool:
    """Flush and drop the page cache (root only); False where this is not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """One measured operation in a fresh process; prints a JSON line."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from distributed_ondisk.atomic import fsync_path
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice

    t0 = time.perf_counter()  # imports above are not timed
    if args.child == "merge":
        merge_hslice(MergeJob([args.inputs], Path(args.out), threads=args.nt, force=True))
        nbytes = Path(args.out).with_suffix(".invlists").stat().st_size
    elif args.child == "faiss":
        faiss.omp_set_num_threads(args.nt)
        index = faiss.read_index(args.trained)
        il = args.out + ".ivfdata"
        merge_ondisk(index, sorted(str(p) for p in Path(args.inputs).glob("*.index")), il)
        faiss.write_index(index, args.out)
        fsync_path(Path(il))
        fsync_path(Path(args.out))
        nbytes = Path(il).stat().st_size
    else:  # dd: sequential write of the same byte count
        nbytes = args.nbytes
        buf = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
        with open(args.out, "wb") as f:
            left = nbytes
            while left > 0:
                left -= f.write(buf[: min(left, len(buf))])
            f.flush()
            os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "bytes": nbytes, "hwm": vm_hwm()}))


def shifted_copies(vslice_dir: Path, out_dir: Path, copies: int) -> None:
    """The vslices of ``vslice_dir`` and ``copies - 1`` copies with ids shifted past them."""
    import faiss

    from distributed_ondisk.ondisk import manifest as mf
    from distributed_ondisk.ondisk.vslice import KIND
    from distributed_ondisk.stages.vslice import write_vslice

    src = sorted(vslice_dir.glob("*.index"))
    span = max(mf.load_manifest(p, KIND)["id_range"][1] for p in src)
    for c in range(copies):
        for p in src:
            doc = mf.load_manifest(p, KIND)
            index = faiss.read_index(str(p))
            il = faiss.extract_index_ivf(index).invlists
            for lst in range(il.nlist):
                if c and il.list_size(lst):
                    faiss.rev_swig_ptr(il.get_ids(lst), il.list_size(lst))[:] += c * span
            i0, i1 = (v + c * span for v in doc["id_range"])
            write_vslice(
                index,
                out_dir / f"c{c:02d}_{p.name}",
                params={**doc["params"], "rows": [i0, i1]},
                trained_fingerprint=doc["trained_fingerprint"],
                id_range=(i0, i1),
                data=doc["data"],
            )


def run_child(kind: str, **kw: object) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{kind} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k x 64, nlist 1024")
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--nlist", type=int, default=16384)
    ap.add_argument("--nslice", type=int, default=4, help="vslices merged into one shard")
    ap.add_argument("--nt", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2, help="add-rate runs per method (best kept)")
    ap.add_argument("--merge_repeat", type=int, default=5, help="merge runs per method (best kept)")
    ap.add_argument(
        "--merge_copies",
        type=int,
        default=4,
        help="merge the vslices and copies of them with shifted ids, this many in all",
    )
    ap.add_argument("--dir", help="scratch directory on the disk to measure (default: temp)")
    ap.add_argument("--child", choices=["merge", "faiss", "dd"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--trained", help=argparse.SUPPRESS)
    ap.add_argument("--nbytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.n, args.d, args.nlist, args.repeat, args.merge_copies = 200_000, 64, 1024, 1, 1
        args.merge_repeat = 1

    import faiss

    from distributed_ondisk.ondisk.vslice import read_layout
    from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
    from distributed_ondisk.workdir import Workdir

    faiss.omp_set_num_threads(args.nt)
    root = Path(tempfile.mkdtemp(prefix="bench_build_", dir=args.dir))
    try:
        wd = Workdir.from_arg(root).create()
        rs = np.random.default_rng(0)
        centers = rs.standard_normal((1000, args.d), dtype=np.float32) * 4
        x = centers[rs.integers(0, 1000, args.n)] + rs.standard_normal(
            (args.n, args.d), dtype=np.float32
        )
        np.save(wd.data(".npy"), x)
        km = faiss.Kmeans(args.d, args.nlist, niter=4, seed=1, max_points_per_centroid=40)
        km.train(x[: args.nlist * 40])
        np.save(wd.centroids, km.centroids)
        make_trained_index(
            wd.centroids, wd.data(), wd.trained, TrainedIndexConfig(), 0, min(args.n, 200_000)
        )

        # add rate: bare index.add of the rows in RAM vs make_index_vslice from disk
        n1 = args.n // args.nslice
        t_bare, t_vslice = [], []
        for r in range(args.repeat):
            bare = faiss.read_index(str(wd.trained))
            t0 = time.perf_counter()
            bare.add(x[:n1])
            t_bare.append(time.perf_counter() - t0)
            del bare
            read_through([wd.data()])  # the rows from the page cache, as the bare add's RAM
            t0 = time.perf_counter()
            make_vslice(
                VsliceJob(
                    wd.trained,
                    wd.data(),
                    wd.vslice(0, args.nslice),
                    nslice=args.nslice,
                    slice_no=0,
                    threads=args.nt,
                    force=r > 0,
                )
            )
            t_vslice.append(time.perf_counter() - t0)
        t_bare, t_vslice = min(t_bare), min(t_vslice)
        for i in range(1, args.nslice):
            make_vslice(
                VsliceJob(
                    wd.trained,
                    wd.data(),
                    wd.vslice(i, args.nslice),
                    nslice=args.nslice,
                    slice_no=i,
                    threads=args.nt,
                )
            )
        del x
        inputs = root / "merge_inputs"
        inputs.mkdir()
        shifted_copies(wd.vslice_dir, inputs, args.merge_copies)
        nin = len(list(inputs.glob("*.index")))

        # each merge from the same cache state: inputs read into the page cache just
        # before ("warm"), or the cache dropped ("cold": inputs come from the disk)
        in_files = sorted(inputs.glob("*.index"))
        can_drop = drop_caches()
        modes = ["warm", "cold"] if can_drop else ["warm"]
        res: dict = {(m, k): [] for m in modes for k in ("ours", "faiss")}
        res["dd"] = []
        lists_bytes = 0  # what the merge writes: every vslice's list entries
        for p in in_files:
            layout = read_layout(p)
            lists_bytes += int(layout.offsets[-1] - layout.offsets[0])
        out = root / "hslices" / "h.index"
        runs: list = [(m, k) for m in modes for k in ("ours", "faiss")] + ["dd"]
        for rnd in range(args.merge_repeat):
            # the order rotates every round: on this disk a run right after a big write
            # (and its deletion) is slower, whichever method it is
            for run in runs[rnd % len(runs) :] + runs[: rnd % len(runs)]:
                shutil.rmtree(root / "hslices")
                os.mkdir(root / "hslices")
                os.sync()
                if run == "dd":
                    res["dd"].append(run_child("dd", out=root / "dd.bin", nbytes=lists_bytes))
                    os.unlink(root / "dd.bin")
                    continue
                mode, kind = run
                if mode == "warm":
                    read_through(in_files)
                else:
                    drop_caches()
                res[run].append(
                    run_child(
                        "merge" if kind == "ours" else "faiss",
                        inputs=inputs,
                        out=out,
                        trained=wd.trained,
                        nt=args.nt,
                    )
                )
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in res.items()}
        mbs = {k: r["bytes"] / r["seconds"] / 1e6 for k, r in best.items()}
        med = {
            k: r[0]["bytes"] / float(np.median([x["seconds"] for x in r])) / 1e6
            for k, r in res.items()
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"# bench_build: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"threads {args.nt}"
    )
    print(
        f"# data {args.n} x {args.d}, RR{args.d},IVF{args.nlist}_HNSW32,SQ6, "
        f"{args.nslice} vslices of {n1} rows; merge of {nin} vslices ({args.merge_copies}x, ids "
        f"shifted), lists {best[('warm', 'ours')]['bytes'] / 1e6:.1f} MB, best of {args.repeat} (add) / "
        f"{args.merge_repeat} (merge), "
        f"scratch {args.dir or tempfile.gettempdir()}{' (--quick)' if args.quick else ''}"
    )
    print("| measure | ours | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    r_add = (n1 / t_vslice) / (n1 / t_bare)
    print(
        f"| add rate, vec/s (make_index_vslice vs bare index.add) | {n1 / t_vslice:,.0f} | "
        f"{n1 / t_bare:,.0f} | {r_add:.2f}x | >= 0.9x |"
    )
    for mode in modes:
        where = "inputs in page cache" if mode == "warm" else "caches dropped, inputs on disk"
        o, f = mbs[(mode, "ours")], mbs[(mode, "faiss")]
        mo, mfa = med[(mode, "ours")], med[(mode, "faiss")]
        print(
            f"| merge MB/s, {where} (vs faiss.contrib.ondisk.merge_ondisk) | {o:,.0f} | "
            f"{f:,.0f} | {o / f:.2f}x | >= 1.0x |"
        )
        print(f"| same, medians of the runs | {mo:,.0f} | {mfa:,.0f} | {mo / mfa:.2f}x | |")
    o = mbs[("warm", "ours")]
    print(
        f"| merge MB/s, inputs in page cache (vs dd-style sequential write, fsync) | "
        f"{o:,.0f} | {mbs['dd']:,.0f} | {o / mbs['dd']:.2f}x | >= 0.5x |"
    )
    ho, hf = best[("warm", "ours")]["hwm"], best[("warm", "faiss")]["hwm"]
    print(
        f"| merge peak RSS, MB (vs merge_ondisk) | {ho / 1e6:,.0f} | {hf / 1e6:,.0f} | "
        f"{ho / hf:.2f}x | bounded |"
    )
    if not can_drop:
        print("# caches could not be dropped (not root): no cold-cache rows")


if __name__ == "__main__":
    main()
