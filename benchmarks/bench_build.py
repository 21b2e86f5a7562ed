#!/usr/bin/env python3
"""Benchmark of the build stages, side by side in one run (bounds measured in it too):

* add rate of make_vslice (read blocks from disk, row-exact transform, add, write +
  manifest) vs a bare ``index.add`` of the same rows in RAM, and vs the bound: the
  transform and coarse assignment of those rows in RAM (what any add must do);
* merge throughput of merge_hslice vs faiss.contrib.ondisk.merge_ondisk on the same
  vslices, both including fsync, and vs the bound: fio writing the same byte count
  with the merge writer's pattern (2 MiB sequential pwrites, queue depth 1,
  preallocated, writeback started per write, one fsync at the end);
* peak memory of each merge, each run in its own process: RssAnon (what cannot be
  reclaimed) beside VmHWM (which also counts reclaimable file pages).

Data: the bundled GloVe vectors by default (``--data synthetic`` for a clustered
mixture).  The merge inputs are the real vslices plus ``--merge_copies - 1`` copies
of them with ids shifted past the data (real codes and list sizes, more bytes: a
merge of a few MB is too short to time on a noisy machine).  Every contender runs
once per round, ``--rounds`` rounds, the order rotating; medians and ranges.

    python benchmarks/bench_build.py --smoke            # seconds, smoke test
    python benchmarks/bench_build.py --quick            # GloVe, nlist 1024 (~2 minutes)
    python benchmarks/bench_build.py --dir /var/tmp     # GloVe, nlist 4096, 16x merge
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class PeakMemory:
    """Peak RSS of this process, sampled every 5 ms by a thread, split as the kernel
    counts it: RssAnon (heap: cannot be reclaimed) and RssFile (file pages, e.g. an
    output written through a mapping: reclaimable once written back).  VmHWM alone
    counts both, so it overstates what a merge holds."""

    def __init__(self) -> None:
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> dict[str, int]:
        with open("/proc/self/status") as f:
            out = {}
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
            return out

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            m = self._read()
            self.anon, self.file = max(self.anon, m["RssAnon"]), max(self.file, m["RssFile"])

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        m = self._read()
        return {
            "hwm": m["VmHWM"],
            "peak_anon": max(self.anon, m["RssAnon"]),
            "peak_file": max(self.file, m["RssFile"]),
        }


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
    """One measured merge in a fresh process; prints a JSON line."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    import distributed_ondisk.stages.merge as merge_mod
    from distributed_ondisk.atomic import fsync_path
    from distributed_ondisk.stages.merge import MergeJob, merge_hslice

    verify: list[float] = []
    check = merge_mod.check_vslices

    def timed_check(*a: object, **kw: object):
        # The inputs' verification (open each vslice, check its manifest, sizes, header
        # and trailer, cross-check fingerprints and id ranges) is work merge_ondisk does
        # not do: timed inside the real merge, so the report can show it apart.
        t = time.perf_counter()
        try:
            return check(*a, **kw)
        finally:
            verify.append(time.perf_counter() - t)

    merge_mod.check_vslices = timed_check
    mem = PeakMemory()
    t0 = time.perf_counter()  # imports above are not timed
    if args.child == "merge":
        merge_hslice(MergeJob([args.inputs], Path(args.out), threads=args.nt, force=True))
        nbytes = Path(args.out).with_suffix(".invlists").stat().st_size
    else:  # faiss.contrib.ondisk.merge_ondisk, then the same fsyncs as ours
        faiss.omp_set_num_threads(args.nt)
        index = faiss.read_index(args.trained)
        il = args.out + ".ivfdata"
        merge_ondisk(index, sorted(str(p) for p in Path(args.inputs).glob("*.index")), il)
        faiss.write_index(index, args.out)
        fsync_path(Path(il))
        fsync_path(Path(args.out))
        nbytes = Path(il).stat().st_size
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "verify_s": sum(verify), "bytes": nbytes, **mem.stop()}))


def run_fio(path: Path, nbytes: int, batch: int) -> dict:
    """The merge's write pattern alone, by fio: sequential ``pwrite``s of one batch
    (psync, queue depth 1) into a ``posix_fallocate``d file, writeback started after
    every write (sync_file_range; ours uses POSIX_FADV_DONTNEED for the same effect),
    one fsync at the end."""
    if shutil.which("fio") is None:
        return {"error": "fio is not installed (scripts/install_system_deps.bash installs it)"}
    cmd = [
        "fio", "--name=merge-write-bound", f"--filename={path}", "--rw=write",
        f"--bs={batch}", f"--size={max(batch, nbytes // batch * batch)}", "--ioengine=psync", "--iodepth=1",
        "--fallocate=posix", "--sync_file_range=write:1", "--end_fsync=1",
        "--output-format=json",
    ]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode:
        return {"error": f"fio failed (rc {r.returncode}): {r.stderr.strip()[-300:]}"}
    job = json.loads(r.stdout)["jobs"][0]["write"]
    # fio's own rate (its process start is not the disk's: at quick sizes it was most of the
    # wall time, 158 MB/s where fio itself measured the disk); whole blocks: its byte count
    nbytes_fio = int(job["io_bytes"])
    return {"seconds": nbytes_fio / max(job["bw_bytes"], 1), "bytes": nbytes_fio,
            "process_s": dt, "fio_bw_bytes": job["bw_bytes"]}  # fmt: skip


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


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The rows to build from: the bundled GloVe vectors (real data), or a clustered
    synthetic mixture."""
    if args.data == "glove":
        from distributed_ondisk.launch.prepare import bundled_glove_path

        x = np.load(bundled_glove_path()).astype(np.float32)
        # GloVe is sorted by word frequency: shuffled, so that every slice looks alike
        x = x[np.random.default_rng(0).permutation(len(x))]
        return np.ascontiguousarray(x[: args.n] if args.n else x), "GloVe 6B 50-d (bundled)"
    rs = np.random.default_rng(0)
    centers = rs.standard_normal((1000, args.d), dtype=np.float32) * 4
    x = centers[rs.integers(0, 1000, args.n)] + rs.standard_normal(
        (args.n, args.d), dtype=np.float32
    )
    return x, "clustered synthetic (1000 Gaussian clusters)"


def add_contenders(wd, x: np.ndarray, args, n1: int) -> dict:
    """The add-rate contenders on slice 0's rows (each run a full add of them)."""
    import faiss

    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice

    rows = x[:n1]
    runs = {"n": 0}

    def bare() -> float:
        index = faiss.read_index(str(wd.trained))
        t0 = time.perf_counter()
        index.add(rows)
        return time.perf_counter() - t0

    def ours() -> float:
        read_through([wd.data()])  # the rows from the page cache, as the bare add's are in RAM
        t0 = time.perf_counter()
        job = VsliceJob(wd.trained, wd.data(), wd.vslice(0, args.nslice), nslice=args.nslice,
                        slice_no=0, threads=args.nt, force=runs["n"] > 0)  # fmt: skip
        make_vslice(job)
        runs["n"] += 1
        return time.perf_counter() - t0

    def bound() -> float:
        """Transform + coarse assignment of the rows in RAM: the two steps any add of
        them must do (encoding and list appends left out, so every add is slower)."""
        index = faiss.read_index(str(wd.trained))
        ivf = faiss.extract_index_ivf(index)
        t0 = time.perf_counter()
        xt = rows
        chain = getattr(index, "chain", None)
        for i in range(chain.size() if chain is not None else 0):
            xt = faiss.downcast_VectorTransform(chain.at(i)).apply(xt)
        ivf.quantizer.search(xt, 1)
        return time.perf_counter() - t0

    return {"ours": ours, "bare": bare, "bound": bound}


def main() -> None:
    import benchlib as bl

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="GloVe 400k x 50, nlist 1024")
    ap.add_argument("--smoke", action="store_true", help="tiny, seconds (tests)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--data", choices=["glove", "synthetic"], default="glove")
    ap.add_argument(
        "--n", type=int, default=0, help="rows (default: every GloVe row; synthetic 2M)"
    )
    ap.add_argument("--d", type=int, default=96, help="synthetic only")
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--nslice", type=int, default=4, help="vslices merged into one shard")
    ap.add_argument("--nt", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every contender")
    ap.add_argument(
        "--merge_copies",
        type=int,
        default=16,
        help="merge the vslices and copies of them with shifted ids, this many in all",
    )
    ap.add_argument("--dir", help="scratch directory on the disk to measure (default: temp)")
    ap.add_argument("--child", choices=["merge", "faiss"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--trained", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.nlist, args.merge_copies = 1024, 4
    if args.smoke:
        args.n, args.nlist, args.merge_copies, args.rounds = 8000, 64, 1, 1
    if args.data == "synthetic" and not args.n:
        args.n = 2_000_000
    mode = bl.mode_of(args)

    import faiss

    from distributed_ondisk.ondisk.vslice import read_layout
    from distributed_ondisk.stages.merge import DEFAULT_BATCH_BYTES
    from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
    from distributed_ondisk.workdir import Workdir

    faiss.omp_set_num_threads(args.nt)
    x, data_name = load_data(args)
    args.n, args.d = x.shape
    config = {k: v for k, v in vars(args).items() if k not in ("json", "child", "inputs", "out",
                                                                "trained")}  # fmt: skip
    res = bl.result("build", mode, {**config, "data_name": data_name})
    root = Path(tempfile.mkdtemp(prefix="bench_build_", dir=args.dir))
    try:
        wd = Workdir.from_arg(root).create()
        np.save(wd.data(".npy"), x)
        km = faiss.Kmeans(args.d, args.nlist, niter=4, seed=1, max_points_per_centroid=40)
        km.train(x[: args.nlist * 40])
        np.save(wd.centroids, km.centroids)
        make_trained_index(
            wd.centroids, wd.data(), wd.trained, TrainedIndexConfig(), 0, min(args.n, 200_000)
        )
        key = faiss.read_index(str(wd.trained))
        n1 = args.n // args.nslice
        add = bl.interleave(add_contenders(wd, x, args, n1), args.rounds)
        for i in range(1, args.nslice):
            make_vslice(VsliceJob(wd.trained, wd.data(), wd.vslice(i, args.nslice),
                                  nslice=args.nslice, slice_no=i, threads=args.nt))  # fmt: skip
        del x
        inputs = root / "merge_inputs"
        inputs.mkdir()
        shifted_copies(wd.vslice_dir, inputs, args.merge_copies)
        in_files = sorted(inputs.glob("*.index"))
        lists_bytes = 0  # what the merge writes: every vslice's list entries
        for p in in_files:
            layout = read_layout(p)
            lists_bytes += int(layout.offsets[-1] - layout.offsets[0])
        can_drop = drop_caches()
        modes = ["warm", "cold"] if can_drop else ["warm"]
        out = root / "hslices" / "h.index"

        def merge(kind: str, cache: str):
            def run() -> dict:
                shutil.rmtree(root / "hslices", ignore_errors=True)
                os.mkdir(root / "hslices")
                os.sync()
                read_through(in_files) if cache == "warm" else drop_caches()
                return run_child(kind, inputs=inputs, out=out, trained=wd.trained, nt=args.nt)

            return run

        def fio() -> dict:
            os.sync()
            r = run_fio(root / "fio.bin", lists_bytes, DEFAULT_BATCH_BYTES)
            (root / "fio.bin").unlink(missing_ok=True)
            return r

        contenders = {f"{k} {c}": merge(k, c) for c in modes for k in ("merge", "faiss")}
        contenders["fio"] = fio
        merges = bl.interleave(contenders, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(res, args, add, merges, modes, n1, lists_bytes, len(in_files), key, data_name)
    bl.emit(res, args.json)


def report(res, args, add, merges, modes, n1, lists_bytes, nin, index, data_name) -> None:
    import benchlib as bl

    rate = {k: bl.summary([n1 / t for t in v]) for k, v in add.items()}
    names = {
        "ours": "ours: make_vslice (rows read from disk in the page cache, transform, add, "
        "write + manifest)",
        "bare": "bare index.add of the same rows in RAM (faiss, one call)",
        "bound": "bound: transform + coarse assignment (quantizer.search) in RAM",
    }
    for k in ("ours", "bare"):
        res["rows"].append({"name": names[k], "measure": "add vec/s", "vec_per_s": rate[k],
                            "threads": args.nt})  # fmt: skip
    res["bounds"].append({"name": names["bound"], "measure": "add vec/s",
                          "vec_per_s": rate["bound"], "threads": args.nt})  # fmt: skip
    b = rate["bound"]["median"]
    add_rows = [[names[k], str(args.nt), bl.fmt_spread(rate[k]), bl.fmt(rate[k]["median"] / b, 2)]
                for k in ("ours", "bare", "bound")]  # fmt: skip
    bl.ratio(res, "add: ours / bare index.add", rate["ours"]["median"] / rate["bare"]["median"],
             "rate; > 1: ours faster")  # fmt: skip
    bl.ratio(res, "add: ours / bound", rate["ours"]["median"] / b, "fraction of the bound")
    bl.ratio(res, "add: bare / bound", rate["bare"]["median"] / b, "fraction of the bound")
    desc = f"{index.__class__.__name__}: " + faiss_key(index)
    res["tables"].append(bl.table(
        f"add rate, {data_name}, {n1} rows (slice 0 of {args.nslice}), {desc}, median (min–max) "
        f"of {args.rounds} interleaved rounds",
        ["contender", "threads", "vec/s", "fraction of bound"], add_rows))  # fmt: skip

    fio_ok = all("error" not in r for r in merges["fio"])
    mb = {}
    for k, v in merges.items():
        if k == "fio" and not fio_ok:
            continue
        mb[k] = bl.summary([r["bytes"] / r["seconds"] / 1e6 for r in v])
    bound = mb["fio"]["median"] if fio_ok else None
    rows = []
    for c in modes:
        where = "inputs in page cache" if c == "warm" else "caches dropped, inputs on disk"
        for k, label in (("merge", "ours: merge_hslice"),
                         ("faiss", "faiss.contrib.ondisk.merge_ondisk")):  # fmt: skip
            key = f"{k} {c}"
            mem = merges[key]
            res["rows"].append({"name": f"{label}, {where}", "measure": "merge MB/s",
                                "mb_per_s": mb[key], "threads": args.nt,
                                "peak_anon_mb": bl.summary([r["peak_anon"] / 1e6 for r in mem]),
                                "hwm_mb": bl.summary([r["hwm"] / 1e6 for r in mem])})  # fmt: skip
            rows.append([f"{label}, {where}", bl.fmt_spread(mb[key]),
                         bl.fmt(mb[key]["median"] / bound, 2) if bound else "— (no fio)",
                         bl.fmt(float(np.median([r["peak_anon"] for r in mem])) / 1e6),
                         bl.fmt(float(np.median([r["hwm"] for r in mem])) / 1e6)])  # fmt: skip
        # the same merges' figures with their input verification (unequal work) taken out
        ours_runs = merges[f"merge {c}"]
        nv = bl.summary([r["bytes"] / (r["seconds"] - r["verify_s"]) / 1e6 for r in ours_runs])
        vs = bl.summary([r["verify_s"] for r in ours_runs])
        vshare = bl.summary([r["verify_s"] / r["seconds"] for r in ours_runs])
        label = f"ours: merge_hslice, {where}, its input verification not counted"
        res["rows"].append({"name": label, "measure": "merge MB/s", "mb_per_s": nv,
                            "verify_s": vs, "verify_share": vshare,
                            "threads": args.nt})  # fmt: skip
        vtxt = (f"{label} ({bl.fmt(vs['median'] * 1000)} ms of verification, "
                f"{vshare['median'] * 100:.0f} % of the merge)")  # fmt: skip
        rows.append([vtxt, bl.fmt_spread(nv),
                     bl.fmt(nv["median"] / bound, 2) if bound else "— (no fio)", "—",
                     "—"])  # fmt: skip
        o, f = mb[f"merge {c}"]["median"], mb[f"faiss {c}"]["median"]
        bl.ratio(res, f"merge ({c}): ours / merge_ondisk", o / f, "throughput; > 1: ours faster")
        bl.ratio(res, f"merge ({c}): ours without input verification / merge_ondisk",
                 nv["median"] / f, "throughput; equal work; > 1: ours faster")  # fmt: skip
        if bound:
            bl.ratio(res, f"merge ({c}): ours / fio bound", o / bound, "fraction of the bound")
            bl.ratio(res, f"merge ({c}): merge_ondisk / fio bound", f / bound,
                     "fraction of the bound")  # fmt: skip
    if fio_ok:
        res["bounds"].append({"name": "fio sequential write, same pattern", "measure": "MB/s",
                              "mb_per_s": mb["fio"]})  # fmt: skip
        label = "bound: fio, 2 MiB psync writes, QD 1, fallocate, writeback per write, fsync"
        rows.append([label, bl.fmt_spread(mb["fio"]), "1.00", "—", "—"])
    else:
        err = merges["fio"][0]["error"]
        res["bounds"].append({"name": "fio sequential write, same pattern", "error": err})
        rows.append([f"bound: fio — not measured: {err}", "—", "—", "—", "—"])
    res["tables"].append(bl.table(
        f"merge of {nin} vslices ({args.merge_copies}x the real ones, ids shifted) into one "
        f"shard of {lists_bytes / 1e6:.0f} MB of lists, fsync included, each merge in its own "
        f"process, median (min–max) of {args.rounds} interleaved rounds",
        ["contender", "MB/s", "fraction of fio bound", "peak RssAnon MB", "VmHWM MB"],
        rows))  # fmt: skip
    res["notes"] += [
        (
            "Add: the bound is the part of an add no implementation can skip (transform and "
            "coarse assignment of the rows, in RAM, same threads); ours and the bare add both "
            "also encode and append to the lists, ours also reads the rows and writes the slice."
        ),
        (
            "Merge: fio writes the same byte count with our writer's pattern (2 MiB sequential "
            "pwrites, queue depth 1, preallocated, writeback started per write, one fsync); the "
            "merges also read their inputs (from the page cache, or from disk when caches are "
            "dropped)."
        ),
        (
            "Our merge verifies its inputs first (each vslice's manifest, file size, layout, "
            "header and trailer against the manifest, trained-index fingerprints, id ranges); "
            "merge_ondisk checks none of it. The row 'its input verification not counted' is "
            "the same merges with that step's time (measured inside each merge) taken out: "
            "the equal-work comparison."
        ),
        (
            "Peak RssAnon is the anonymous (unreclaimable) memory, sampled every 5 ms; VmHWM also "
            "counts file pages such as merge_ondisk's mapped output, which the kernel can reclaim "
            "once written back."
        ),
    ]
    if "cold" not in modes:
        res["notes"].append("caches could not be dropped (not allowed here): no cold-cache rows")


def faiss_key(index) -> str:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    return f"nlist {ivf.nlist}, code size {ivf.code_size} B, d {index.d}"


if __name__ == "__main__":
    main()
