#!/usr/bin/env python3
"""Every benchmark, one command, one JSON file of results.

    python benchmarks/run_all.py --quick         # < 10 minutes on 2 cores
    python benchmarks/run_all.py                 # full sizes (an hour or more)
    python benchmarks/run_all.py --smoke         # seconds: the code paths (tests)
    python benchmarks/run_all.py --quick --readme   # and regenerate README's tables

Each benchmark runs as its own process (``bench_X.py --MODE --json PART``) with
OMP_WAIT_POLICY=PASSIVE (faiss's idle OpenMP threads otherwise spin on cores that
the other processes of the same benchmark need); the parts are collected into
``benchmarks/results/<date>-<mode>.json`` with the machine they ran on.  A
benchmark that fails or cannot run here (no GPU, no Spark) is recorded with its
reason, never silently left out.  ``report.py`` renders the README tables from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl

HERE = Path(__file__).resolve().parent
# (name, script, extra arguments): the order is the README's
BENCHES = [
    ("rpc", "bench_rpc.py", []),
    ("kmeans", "bench_kmeans.py", []),
    ("kmeans_gpu", "bench_kmeans.py", ["--gpu"]),
    ("build", "bench_build.py", []),
    ("search", "bench_search.py", []),
    ("spark", "bench_spark.py", []),
]


def run_one(name: str, script: str, extra: list[str], mode: str, tmp: Path, timeout: float):
    part = tmp / f"{name}.json"
    cmd = [sys.executable, str(HERE / script), *extra, "--json", str(part)]
    if mode != "full":
        cmd.append(f"--{mode}")
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                           check=False)  # fmt: skip
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = str(e.stdout or ""), f"timed out after {timeout:.0f} s", -1
    wall = time.perf_counter() - t0
    sys.stdout.write(out)
    if rc == 0 and part.exists():
        res = json.loads(part.read_text())
    else:
        res = {"bench": name, "mode": mode, "skipped": None,
               "error": f"rc {rc}: {err.strip()[-1500:]}"}  # fmt: skip
        print(f"# {name} FAILED: {res['error']}", file=sys.stderr)
    res["wall_s"] = wall
    res["command"] = " ".join(["python", f"benchmarks/{script}", *cmd[2:]]).replace(
        str(part), "PART.json"
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, < 10 minutes on 2 cores")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (the tests)")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--out", help="result file (default benchmarks/results/<date>-<mode>.json)")
    ap.add_argument("--readme", action="store_true", help="then regenerate README's tables")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    only = set(args.only.split(",")) if args.only else None
    timeout = args.timeout or {"smoke": 120, "quick": 300, "full": 7200}[mode]
    t0 = time.perf_counter()
    results = {"schema": bl.SCHEMA, "mode": mode, "machine": bl.machine(), "benchmarks": {}}
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        for name, script, extra in BENCHES:
            if only and name not in only:
                continue
            print(f"# run_all: {name} ({mode})", flush=True)
            results["benchmarks"][name] = run_one(name, script, extra, mode, Path(tmp), timeout)
    results["wall_s"] = time.perf_counter() - t0
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"{time.strftime('%Y-%m-%d')}-{mode}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"# run_all: {len(results['benchmarks'])} benchmarks in {results['wall_s']:.0f} s -> {out}"
    )
    if args.readme:
        import report

        report.update_readme(out)
    failed = [n for n, r in results["benchmarks"].items() if r.get("error")]
    if failed:
        print(f"# run_all: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
