"""Build time and recall@10 of build_index: local vs Spark local[2] (and autofaiss's own
Spark build with --with-autofaiss) on the same embedding files and memory budget.

    python benchmarks/bench_spark.py --quick                 # small, a minute
    python benchmarks/bench_spark.py --n 2000000 --d 96 --with-autofaiss
    python benchmarks/bench_spark.py --n 200000 --d 64 --nfiles 4 --nq 5000 \
        --with-autofaiss --repeat 2          # the docs/SPARK.md table

autofaiss needs numpy < 2, so it runs in its own virtual environment
(``--afvenv``, default /tmp/afvenv), created and filled by pip on first use; when
that fails the table says why.  Spark's start-up is timed apart from the build.
recall@10 is faiss's 1-recall@10 at nprobe 16 on fresh queries of the same mixture;
both sides are built with ``--metric`` (default "l2"; autofaiss's own default is "ip"),
the ground truth by the same metric; autofaiss's index is read back
from its files with nprobe set on each IVF, and its ids checked by searching stored
rows.  The sides run interleaved, ``--repeat`` times each.
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

import faiss
import numpy as np

from distributed_ondisk.autobuild import build_index
from distributed_ondisk.datasets import iter_clustered, make_queries
from distributed_ondisk.errors import InputError
from distributed_ondisk.evaluate import recall_at
from distributed_ondisk.extras import require

AUTOFAISS_SCRIPT = r"""
import json, sys, time
import faiss, numpy as np
from pyspark.sql import SparkSession
from autofaiss import build_index
emb, out, budget, mem, nshards, queries, gt, key, metric = sys.argv[1:10]
SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false") \
    .config("spark.ui.showConsoleProgress", "false") \
    .config("spark.driver.memory", "4g").getOrCreate()
kw = {} if key == "-" else {"index_key": key}
t0 = time.perf_counter()
build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget, current_memory_available=mem,
            temporary_indices_folder=out + "/tmp", nb_indices_to_keep=int(nshards),
            distributed="pyspark", file_format="npy", metric_type=metric, **kw)
dt = time.perf_counter() - t0
infos = json.load(open(out + "/infos.json"))
xq, I_gt = np.load(queries), np.load(gt)
import glob
# one shard is written as knn.index, several as knn.index1..N (ids: global row numbers
# of the files in sorted order, as embedding_reader lists them, the same as ours)
paths = sorted(p for p in glob.glob(out + "/knn.index*") if not p.endswith(".ivfdata"))
shards = [faiss.read_index(p, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_MMAP) for p in paths]
for s in shards:   # set on the IVF itself: ParameterSpace does not reach into IndexShards
    faiss.extract_index_ivf(s).nprobe = 16
index = shards[0]
if len(shards) > 1:
    index = faiss.IndexShards(shards[0].d, True, False)
    for s in shards: index.add_shard(s)
_, I = index.search(xq, 10)
# the id mapping: stored rows searched for themselves must come back under their row number
files = sorted(glob.glob(emb.rstrip("/") + "/**/*.npy", recursive=True))
x = np.concatenate([np.load(f) for f in files])
probe = np.linspace(0, len(x) - 1, 50).astype(np.int64)
_, Is = index.search(x[probe], 1)
# (by inner product a row's best match may be a longer row: the check is for l2)
self_hit = float((Is[:, 0] == probe).mean()) if metric == "l2" else None
print("RESULT " + json.dumps({"seconds": dt, "recall10": float((I == I_gt[:, :1]).any(1).mean()),
                              "index_key": infos.get("index_key", "?"), "files": paths,
                              "ntotal": int(sum(s.ntotal for s in shards)),
                              "metric": int(shards[0].metric_type),
                              "self_hit": self_hit}))
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


def ours(emb: Path, out: Path, distributed, args, xq, gt) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a rerun in --workdir starts afresh
    t0 = time.perf_counter()
    index, infos = build_index(
        str(emb),
        str(out / "index"),
        str(out / "infos.json"),
        index_key=args.index_key,
        distributed=distributed,
        max_index_memory_usage=args.max_index_memory_usage,
        current_memory_available=args.current_memory_available,
        nb_indices_to_keep=args.nb_indices,
        eval_queries=0,
        seed=args.seed,
        metric_type=args.metric,
    )
    dt = time.perf_counter() - t0
    _, I = index.search(xq, 10, nprobe=16)
    return {
        "seconds": dt,
        "recall10": recall_at(I, gt, (10,))[10],
        "index_key": infos["index_key"],
        "stages": infos["timings_s"],
    }


def autofaiss(emb: Path, out: Path, sub: str, args, xq, gt) -> dict:
    venv = Path(args.afvenv)
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=False, capture_output=True, text=True
        )
        if r.returncode:
            return {"error": f"cannot create venv {venv}: {r.stderr.strip()[-300:]}"}
    have = subprocess.run(
        [str(py), "-c", "import autofaiss, pyspark"], check=False, capture_output=True
    )
    r = (
        have
        if have.returncode == 0
        else subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "autofaiss", "pyspark", "pyarrow<18"],
            check=False,
            capture_output=True,
            text=True,
        )
    )
    if r.returncode:
        return {"error": f"pip install autofaiss failed: {r.stderr.strip()[-400:]}"}
    np.save(out / "queries.npy", xq)
    np.save(out / "gt.npy", gt)
    script = out / "run_autofaiss.py"
    script.write_text(AUTOFAISS_SCRIPT)
    r = subprocess.run(
        [
            str(py),
            str(script),
            str(emb),
            str(out / sub),
            args.max_index_memory_usage,
            args.current_memory_available,
            str(args.nb_indices),
            str(out / "queries.npy"),
            str(out / "gt.npy"),
            args.index_key or "-",
            args.metric,
        ],
        check=False,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYSPARK_PYTHON": str(py),  # executors too
            "PYSPARK_DRIVER_PYTHON": str(py),
        },
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        return {"error": f"autofaiss run failed (rc {r.returncode}): {r.stderr.strip()[-400:]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--nfiles", type=int, default=8)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--nb_indices", type=int, default=1)
    ap.add_argument("--index_key", default=None, help="default: chosen from the budget")
    ap.add_argument("--max_index_memory_usage", default="1G")
    ap.add_argument("--current_memory_available", default="8G")
    ap.add_argument("--quick", action="store_true", help="n=30000, d=32, 4 files")
    ap.add_argument("--with-autofaiss", dest="with_autofaiss", action="store_true")
    ap.add_argument("--afvenv", default="/tmp/afvenv")
    ap.add_argument("--repeat", type=int, default=1, help="builds per side (shared machine)")
    ap.add_argument("--seed", type=int, default=1234, help="our k-means seed")
    ap.add_argument("--data_seed", type=int, default=0, help="the mixture the data is drawn from")
    ap.add_argument(
        "--metric",
        choices=["l2", "ip"],
        default="l2",
        help="metric_type of both builds (and of the ground truth)",
    )
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    try:  # before writing the inputs and the ground truth, which take minutes at full size
        require("spark", "bench_spark.py (the Spark side)")
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    if args.quick:
        args.n, args.d, args.nfiles, args.nq = 30000, 32, 4, 300
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_spark_"))
    emb = root / "emb"
    if not emb.exists():
        write_inputs(emb, args.n, args.d, args.nfiles, seed=args.data_seed)
    xq = make_queries(args.nq, args.d, seed=args.data_seed)  # fresh rows of the same mixture
    gt = ground_truth(emb, xq, args.metric)
    rows: dict[str, dict] = {}
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
    startup = time.perf_counter() - t0
    # the sides interleaved, so that load from others on a shared machine hits each alike
    for r in range(1, args.repeat + 1):
        rows[f"ours local #{r}"] = ours(emb, root / f"local{r}", None, args, xq, gt)
        rows[f"ours spark local[2] #{r}"] = ours(emb, root / f"spark{r}", "pyspark", args, xq, gt)
        if args.with_autofaiss:
            shutil.rmtree(root / f"af{r}", ignore_errors=True)
            (root / f"af{r}").mkdir()
            rows[f"autofaiss spark local[2] #{r}"] = autofaiss(emb, root, f"af{r}", args, xq, gt)
    spark.stop()
    side = {"ours local": 0, "ours spark local[2]": 1, "autofaiss spark local[2]": 2}
    rows = dict(sorted(rows.items(), key=lambda kv: (side[kv[0].split(" #")[0]], kv[0])))
    import pyspark

    print(
        f"# bench_spark: n={args.n} d={args.d} files={args.nfiles} nq={args.nq} "
        f"shards={args.nb_indices} budget={args.max_index_memory_usage} metric={args.metric} "
        f"data_seed={args.data_seed}"
    )
    print(
        f"# {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"pyspark {pyspark.__version__}; Spark start-up {startup:.1f} s (not in the times)"
    )
    print(f"{'build':<30} {'index key':<28} {'time s':>8} {'R@10 np16':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<30} {'-':<28} {'-':>8} {'-':>10}  ({r['error']})")
        else:
            print(f"{name:<30} {r['index_key']:<28} {r['seconds']:>8.1f} {r['recall10']:>10.3f}")
    for name, r in rows.items():
        if "stages" in r:
            print(f"# {name} stages: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items()))
        if "self_hit" in r:  # autofaiss: its index read back as the benchmark reads it
            hit = "-" if r["self_hit"] is None else f"{r['self_hit']:.2f}"
            print(
                f"# {name}: {len(r['files'])} file(s), {r['ntotal']} vectors, metric "
                f"{'L2' if r['metric'] == 1 else 'IP'}, stored rows found under their "
                f"own id: {hit}"
            )
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
