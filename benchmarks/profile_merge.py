#!/usr/bin/env python3
"""Where our merge's time goes, against merge_ondisk's total (not part of run_all).

Builds bench_build.py's merge inputs (GloVe, nlist 1024, 4 vslices, then ``--copies``
shifted copies of them), then per size: our merge_hslice twice in this process under
cProfile (the first call pays the first-use costs a fresh process pays), the summary of
its main steps (input verification, list copy, gather, fsync), and one merge of each
kind in a fresh process as bench_build.py times them.

    python benchmarks/profile_merge.py --copies 4,16     # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_build as bb

from distributed_ondisk.stages.merge import MergeJob, merge_hslice
from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
from distributed_ondisk.workdir import Workdir

# (label, how the function shows in pstats) of the steps worth naming
STEPS = [
    ("input verification (check_vslices)", "check_vslices"),
    ("list copy (write_lists)", "write_lists"),
    ("  of it: gather (pyarrow take)", "take"),
    ("fsync", "posix.fsync"),
    ("manifest (write_manifest)", "write_manifest"),
]


def step_times(pr: cProfile.Profile) -> dict[str, float]:
    st = pstats.Stats(pr).stats  # type: ignore[attr-defined]
    out = {}
    for label, name in STEPS:
        # cumulative time of every function of that name (primitive calls only)
        out[label] = sum(v[3] for k, v in st.items() if k[2] == name or name in k[2])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--copies", default="4,16", help="merge_copies values to profile")
    ap.add_argument("--nt", type=int, default=2)
    ap.add_argument("--top", type=int, default=0, help="also print the top N of each profile")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="profile_merge_"))
    try:
        wd = Workdir.from_arg(root).create()
        x, _ = bb.load_data(argparse.Namespace(data="glove", n=0, d=50))
        np.save(wd.data(".npy"), x)
        km = faiss.Kmeans(x.shape[1], 1024, niter=4, seed=1, max_points_per_centroid=40)
        km.train(x[: 1024 * 40])
        np.save(wd.centroids, km.centroids)
        make_trained_index(wd.centroids, wd.data(), wd.trained, TrainedIndexConfig(), 0, 200_000)
        for i in range(4):
            make_vslice(VsliceJob(wd.trained, wd.data(), wd.vslice(i, 4), nslice=4, slice_no=i,
                                  threads=args.nt))  # fmt: skip
        for copies in (int(c) for c in args.copies.split(",")):
            inp = root / f"in{copies}"
            inp.mkdir()
            bb.shifted_copies(wd.vslice_dir, inp, copies)
            files = sorted(inp.glob("*.index"))
            for rep in range(2):
                out = root / f"out{copies}_{rep}"
                out.mkdir()
                bb.read_through(files)
                pr = cProfile.Profile()
                t0 = time.perf_counter()
                pr.enable()
                merge_hslice(MergeJob([str(inp)], out / "h.index", threads=args.nt, force=True))
                pr.disable()
                dt = time.perf_counter() - t0
                nbytes = (out / "h.invlists").stat().st_size
                print(f"\n{len(files)} vslices, {nbytes / 1e6:.0f} MB, in process, call {rep + 1}: "
                      f"{dt:.3f} s")  # fmt: skip
                for label, t in step_times(pr).items():
                    print(f"  {label:40s} {t:.3f} s  {100 * t / dt:4.0f} %")
                if args.top:
                    s = io.StringIO()
                    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(args.top)
                    print(s.getvalue())
                kw = {"trained": wd.trained, "nt": args.nt}
                f = bb.run_child("faiss", inputs=inp, out=out / "f.index", **kw)
                o = bb.run_child("merge", inputs=inp, out=out / "m.index", **kw)
                print(f"  fresh process: ours {o['seconds']:.3f} s (verification "
                      f"{o['verify_s']:.3f} s), merge_ondisk {f['seconds']:.3f} s")  # fmt: skip
                shutil.rmtree(out)
            shutil.rmtree(inp)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
