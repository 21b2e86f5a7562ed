"""Stage timings and the work directory's final ``report.json``.

Each stage of run_on_cluster.bash records its wall time in its own file,
``WORKDIR/timings/<stage>.json`` (array tasks of one stage each write
``<stage>.<task>.json``), so concurrent Slurm tasks never write one file.
:func:`write_report` gathers them with the dataset, k-means and search results
into ``report.json``::

    {"n": int, "d": int, "nlist": int, "nq": int, "queries": str, "kmeans_objective": float,
     "timings_s": {stage: seconds}, "search": [{"nprobe": int, "recall_at_1": float,
     "recall_at_10": float, "10_recall_at_10": float, "qps": float, "variant": str}, ...]}

For a stage split into tasks the reported time is the span from the first
task's start to the last task's end (what a person waiting for it sees).
``queries`` says where the recall's queries came from ("file PATH", "sample of N
indexed rows, seed S" or "N held-out rows", see :mod:`distributed_ondisk.launch.prepare`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.workdir import Workdir


def record_timing(
    wd: Workdir, stage: str, start: float, end: float, task: str | None = None
) -> Path:
    if not stage.replace("_", "").isalnum():
        raise InputError(f"stage name {stage!r}: letters, digits and _ only")
    name = f"{stage}.{task}.json" if task not in (None, "") else f"{stage}.json"
    path = wd.timings_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        path, json.dumps({"stage": stage, "task": task, "start": start, "end": end}) + "\n"
    )
    return path


def collect_timings(wd: Workdir) -> dict[str, float]:
    spans: dict[str, list[float]] = {}
    for p in sorted(wd.timings_dir.glob("*.json")):
        rec = json.loads(p.read_text("utf-8"))
        lo_hi = spans.setdefault(rec["stage"], [rec["start"], rec["end"]])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], rec["start"]), max(lo_hi[1], rec["end"])
    return {stage: round(hi - lo, 3) for stage, (lo, hi) in spans.items()}


def kmeans_objective(wd: Workdir) -> float | None:
    """The final objective, from the manifest distributed_kmeans.py writes next to the centroids."""
    side = Workdir.manifest(wd.centroids)
    if not side.is_file():
        return None
    return float(json.loads(side.read_text("utf-8"))["objective"])


def search_points(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for p in json.loads(path.read_text("utf-8")):
        rec = p.get("recall") or {}
        out.append(
            {
                "variant": p["variant"],
                "nprobe": int(p["nprobe"]),
                "recall_at_1": rec.get("1", rec.get(1)),
                "recall_at_10": rec.get("10", rec.get(10)),
                "recall_at_100": rec.get("100", rec.get(100)),
                "10_recall_at_10": p.get("recall_10_at_10"),
                "qps": float(p["qps"]),
            }
        )
    return out


def write_report(wd: Workdir, nlist: int) -> dict[str, Any]:
    dataset = json.loads(wd.dataset.read_text("utf-8"))
    from distributed_ondisk.launch.prepare import query_source

    report = {
        "n": int(dataset["n_db"]),
        "d": int(dataset["d"]),
        "nlist": int(nlist),
        "nq": int(dataset["nq"]),
        "queries": query_source(dataset),
        "kmeans_objective": kmeans_objective(wd),
        "timings_s": collect_timings(wd),
        "search": search_points(wd.search_report),
    }
    atomic_write_text(wd.report, json.dumps(report, indent=1) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distributed_ondisk.launch.report")
    add_logging_args(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timing", help="record one stage's wall time")
    t.add_argument("workdir")
    t.add_argument("stage")
    t.add_argument("start", type=float, help="start time (seconds since the epoch)")
    t.add_argument("--task", help="task number within the stage (array jobs)")
    r = sub.add_parser("write", help="write WORKDIR/report.json")
    r.add_argument("workdir")
    r.add_argument("--nlist", type=int, required=True)
    return ap


def _main(args: argparse.Namespace) -> int:
    wd = Workdir.from_arg(args.workdir)
    if args.cmd == "timing":
        record_timing(wd, args.stage, args.start, time.time(), args.task)
    else:
        write_report(wd, args.nlist)
        print(wd.report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
