#!/usr/bin/env python3
"""Build time and recall of build_index at equal work: ours local, ours on Spark
local[2], and autofaiss's own Spark build, on the same embedding files, index key,
nprobe and memory budget.

    python benchmarks/bench_spark.py --smoke                 # seconds, ours local only
    python benchmarks/bench_spark.py --quick                 # 30k x 32, a few minutes
    python benchmarks/bench_spark.py --n 2000000 --d 96 --with-autofaiss

Equal work: every side builds the same ``--index_key`` (default ``IVF<nlist>_HNSW32,PQ<d/2>``);
autofaiss gets ``index_param="nprobe=16"`` so it skips its hyper-parameter search;
ours runs without evaluation; autofaiss's metrics pass, which it always runs, is
timed from its own log and taken out ("equal work s").  Every build runs in a
fresh process, so both Spark sides start a fresh JVM, timed apart.  The sides are
interleaved over ``--rounds`` rounds.

autofaiss needs numpy < 2, so it runs in its own virtual environment
(``--afvenv``, default /tmp/afvenv), created and filled by pip with
``--with-autofaiss``; without it the table says why autofaiss did not run.
Recall: 1-recall@10 and 10-recall@10 at nprobe 16 on fresh queries of the same
mixture, by ``--metric`` (default "l2"; autofaiss's own default is "ip").
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

import benchlib  # noqa: F401 - puts this checkout first on sys.path
import faiss
import numpy as np

from distributed_ondisk.autobuild import build_index
from distributed_ondisk.datasets import iter_clustered, make_queries
from distributed_ondisk.errors import InputError
from distributed_ondisk.evaluate import intersection_recall, recall_at
from distributed_ondisk.extras import require

AUTOFAISS_SCRIPT = r"""
import glob, json, logging, re, sys, time
t_import = time.perf_counter()
import faiss, numpy as np
from pyspark.sql import SparkSession
from autofaiss import build_index
emb, out, budget, mem, nshards, queries, gt, key, metric = sys.argv[1:10]
t0 = time.perf_counter()
SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false") \
    .config("spark.ui.showConsoleProgress", "false") \
    .config("spark.driver.memory", "4g").getOrCreate()
jvm = time.perf_counter() - t0
stages = {}
class Grab(logging.Handler):  # autofaiss's Timeit lines: '>>> Finished "X" in S secs'
    def emit(self, record):
        m = re.search(r'Finished "(.*)" in ([0-9.]+) secs', record.getMessage())
        if m:
            stages[m.group(1).strip()] = float(m.group(2))
logging.getLogger("autofaiss").addHandler(Grab())
t0 = time.perf_counter()
# index_param given: autofaiss skips its hyper-parameter search (same nprobe as ours)
build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget, current_memory_available=mem,
            temporary_indices_folder=out + "/tmp", nb_indices_to_keep=int(nshards),
            distributed="pyspark", file_format="npy", metric_type=metric, index_key=key,
            index_param="nprobe=16")
dt = time.perf_counter() - t0
metrics_s = sum(v for k, v in stages.items() if k.startswith("Compute fast metrics"))
xq, I_gt = np.load(queries), np.load(gt)
paths = sorted(p for p in glob.glob(out + "/knn.index*") if not p.endswith(".ivfdata"))
shards = [faiss.read_index(p, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_MMAP) for p in paths]
for s in shards:   # set on the IVF itself: ParameterSpace does not reach into IndexShards
    faiss.extract_index_ivf(s).nprobe = 16
index = shards[0]
if len(shards) > 1:
    index = faiss.IndexShards(shards[0].d, True, False)
    for s in shards: index.add_shard(s)
_, I = index.search(xq, 10)
print("RESULT " + json.dumps({"seconds": dt, "jvm_s": jvm, "metrics_s": metrics_s,
                              "stages": stages, "I": I.tolist(),
                              "ntotal": int(sum(s.ntotal for s in shards))}))
"""


def write_inputs(folder: Path, n: int, d: int, nfiles: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.concatenate(list(iter_clustered(n, d, seed=seed)))
    for i, part in enumerate(np.array_split(x, nfiles)):
        np.save(folder / f"part{i:03d}.npy", part)


def ground_truth(folder: Path, xq: np.ndarray, metric: str) -> np.ndarray:
    ip = metric == "ip"
    heap = faiss.ResultHeap(len(xq), 10, keep_max=ip)
    start = 0
    for p in sorted(folder.glob("*.npy")):
        x = np.load(p)
        D, I = faiss.knn(xq, x, 10, metric=faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)
        heap.add_result(D, I + start)
        start += len(x)
    heap.finalize()
    return heap.I


def ours_side(args) -> None:
    """One build of ours in this fresh process (a fresh JVM for the Spark side): prints
    a RESULT line."""
    emb, out, distributed = Path(args.emb), Path(args.out), args.side == "ours-spark"
    jvm = 0.0
    if distributed:
        from pyspark.sql import SparkSession

        t0 = time.perf_counter()
        spark = (
            SparkSession.builder.master("local[2]")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "4g")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        jvm = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, infos = build_index(
        str(emb),
        str(out / "index"),
        str(out / "infos.json"),
        index_key=args.index_key,
        distributed="pyspark" if distributed else None,
        max_index_memory_usage=args.max_index_memory_usage,
        current_memory_available=args.current_memory_available,
        nb_indices_to_keep=args.nb_indices,
        eval_queries=0,  # autofaiss's metrics pass is timed apart and taken out
        seed=args.seed,
        metric_type=args.metric,
    )
    dt = time.perf_counter() - t0
    _, I = index.search(np.load(args.queries), 10, nprobe=16)
    print("RESULT " + json.dumps({"seconds": dt, "jvm_s": jvm, "metrics_s": 0.0,
                                  "stages": infos["timings_s"], "I": I.tolist(),
                                  "index_key": infos["index_key"]}))  # fmt: skip


def run_side(side: str, emb: Path, out: Path, args, qpath: Path, gtpath: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if side == "autofaiss":
        py = Path(args.afvenv) / "bin" / "python"
        script = out / "run_autofaiss.py"
        script.write_text(AUTOFAISS_SCRIPT)
        cmd = [str(py), str(script), str(emb), str(out), args.max_index_memory_usage,
               args.current_memory_available, str(args.nb_indices), str(qpath), str(gtpath),
               args.index_key, args.metric]  # fmt: skip
        env = {**os.environ, "PYSPARK_PYTHON": str(py), "PYSPARK_DRIVER_PYTHON": str(py)}
    else:
        cmd = [sys.executable, __file__, "--side", side, "--emb", str(emb), "--out", str(out),
               "--queries", str(qpath), "--index_key", args.index_key, "--metric", args.metric,
               "--max_index_memory_usage", args.max_index_memory_usage,
               "--current_memory_available", args.current_memory_available,
               "--nb_indices", str(args.nb_indices), "--seed", str(args.seed)]  # fmt: skip
        env = dict(os.environ)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        return {"error": f"{side} failed (rc {r.returncode}): {r.stderr.strip()[-400:]}"}
    out_d = json.loads(lines[-1][len("RESULT ") :])
    out_d["process_s"] = wall
    return out_d


def autofaiss_ready(args) -> str | None:
    """None when autofaiss can run, else why not (installs it with --with-autofaiss)."""
    venv = Path(args.afvenv)
    py = venv / "bin" / "python"
    if not py.exists() and not args.with_autofaiss:
        return f"no autofaiss virtual environment at {venv} (--with-autofaiss creates it)"
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False,
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode:
            return f"cannot create venv {venv}: {r.stderr.strip()[-300:]}"
    have = subprocess.run([str(py), "-c", "import autofaiss, pyspark"], check=False,
                          capture_output=True)  # fmt: skip
    if have.returncode == 0:
        return None
    if not args.with_autofaiss:
        return f"autofaiss/pyspark not importable in {venv} (--with-autofaiss installs them)"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "autofaiss", "pyspark", "pyarrow<18"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    return None if r.returncode == 0 else f"pip install autofaiss failed: {r.stderr[-400:]}"


def main() -> int:
    import benchlib as bl

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--nfiles", type=int, default=8)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--nb_indices", type=int, default=1)
    ap.add_argument("--index_key", default=None, help="the same for every side (default by n)")
    ap.add_argument("--max_index_memory_usage", default="1G")
    ap.add_argument("--current_memory_available", default="8G")
    ap.add_argument("--quick", action="store_true", help="n=30000, d=32, 4 files")
    ap.add_argument("--smoke", action="store_true", help="tiny; ours local only (tests)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--with-autofaiss", dest="with_autofaiss", action="store_true",
                    help="install autofaiss into --afvenv if missing")  # fmt: skip
    ap.add_argument("--afvenv", default="/tmp/afvenv")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side")
    ap.add_argument("--seed", type=int, default=1234, help="our k-means seed")
    ap.add_argument("--data_seed", type=int, default=0, help="the mixture the data is drawn from")
    ap.add_argument("--metric", choices=["l2", "ip"], default="l2",
                    help="metric_type of every build (and of the ground truth)")  # fmt: skip
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--side", choices=["ours-local", "ours-spark"], help=argparse.SUPPRESS)
    ap.add_argument("--emb", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--queries", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        ours_side(args)
        return 0
    if args.quick:
        args.n, args.d, args.nfiles, args.nq = 30_000, 32, 4, 500
    if args.smoke:
        args.n, args.d, args.nfiles, args.nq, args.rounds = 4000, 16, 2, 100, 1
    if args.index_key is None:
        nlist = 256 if args.n <= 200_000 else 4096
        # a PQ key: autofaiss's memory model (get_optimal_train_size) divides by zero on SQ
        args.index_key = f"IVF{nlist}_HNSW32,PQ{args.d // 2}"
    mode = bl.mode_of(args)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "side", "emb", "out",
                                                                "queries")}  # fmt: skip
    res = bl.result("spark", mode, config)
    sides = ["ours-local"]
    why_not: dict[str, str] = {}
    if mode == "smoke":
        why_not["ours-spark"] = why_not["autofaiss"] = "not in --smoke (a JVM start each)"
    else:
        try:
            require("spark", "bench_spark.py (the Spark side)")
            sides.append("ours-spark")
        except InputError as e:
            why_not["ours-spark"] = str(e)
        reason = autofaiss_ready(args)
        if reason is None and "ours-spark" in sides:
            sides.append("autofaiss")
        else:
            why_not["autofaiss"] = reason or "needs Spark"
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_spark_"))
    try:
        emb = root / "emb"
        if not emb.exists():
            write_inputs(emb, args.n, args.d, args.nfiles, seed=args.data_seed)
        xq = make_queries(args.nq, args.d, seed=args.data_seed)  # fresh rows of the mixture
        gt = ground_truth(emb, xq, args.metric)
        qpath, gtpath = root / "queries.npy", root / "gt.npy"
        np.save(qpath, xq)
        np.save(gtpath, gt)
        runs = bl.interleave(
            {s: (lambda s=s: run_side(s, emb, root / s, args, qpath, gtpath)) for s in sides},
            args.rounds,
        )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    report(res, args, runs, why_not, gt)
    bl.emit(res, args.json)
    return 0


def report(res, args, runs, why_not, gt) -> None:
    import benchlib as bl

    labels = {
        "ours-local": "ours, local (no Spark)",
        "ours-spark": "ours, Spark local[2]",
        "autofaiss": "autofaiss, Spark local[2]",
    }
    rows = []
    med = {}
    for side, rs in runs.items():
        errs = [r["error"] for r in rs if "error" in r]
        if errs:
            why_not[side] = errs[0]
            continue
        build = bl.summary([r["seconds"] for r in rs])
        equal = bl.summary([r["seconds"] - r["metrics_s"] for r in rs])
        jvm = bl.summary([r["jvm_s"] for r in rs])
        I = np.array(rs[-1]["I"])
        rec = {"1-R@10": recall_at(I, gt, (10,))[10],
               "10-R@10": intersection_recall(I, gt, 10)}  # fmt: skip
        med[side] = equal["median"]
        res["rows"].append({"name": labels[side], "build_s": build, "equal_work_s": equal,
                            "jvm_s": jvm, "recall": rec, "stages": rs[-1].get("stages")})  # fmt: skip
        rows.append([labels[side], args.index_key, bl.fmt_spread(build, 1),
                     bl.fmt_spread(equal, 1), bl.fmt_spread(jvm, 1) if side != "ours-local"
                     else "—", f"{rec['1-R@10']:.3f}", f"{rec['10-R@10']:.3f}"])  # fmt: skip
    for side, why in why_not.items():
        rows.append([labels[side], "—", "—", "—", "—", "—", f"not run: {why}"])
    if "ours-spark" in med and "autofaiss" in med:
        bl.ratio(res, "ours Spark / autofaiss Spark", med["ours-spark"] / med["autofaiss"],
                 "build time, equal work; < 1: ours faster")  # fmt: skip
    if "ours-spark" in med:
        bl.ratio(res, "ours Spark / ours local", med["ours-spark"] / med["ours-local"],
                 "build time: Spark's overhead on one machine")  # fmt: skip
    res["tables"].append(bl.table(
        f"build_index, {args.n} x {args.d} clustered in {args.nfiles} .npy files, index key "
        f"{args.index_key} for every side, nprobe 16, median (min–max) of {args.rounds} "
        "interleaved rounds, each build in a fresh process (a fresh JVM for the Spark sides)",
        ["build", "index key", "build_index s", "equal work s", "JVM start s (not in times)",
         "1-R@10", "10-R@10"], rows))  # fmt: skip
    res["notes"] += [
        (
            "Equal work: the same index key for every side, nprobe 16 given to autofaiss "
            "(index_param: it skips its hyper-parameter search), ours without evaluation "
            "(eval_queries=0); autofaiss always computes its 'fast metrics' after the build: "
            "'equal work s' is its build_index time minus that step (from its own log), ours' "
            "build_index time. Both save their index files; each build runs in a fresh process, "
            "the JVM start timed apart for both."
        ),
        (
            "The sides differ in what the key leaves open: ours builds the HNSW quantizer with "
            "efConstruction 200 (faiss's default, which autofaiss uses, is 40)."
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
