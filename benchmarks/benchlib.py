"""What every benchmark shares: the machine's description, rounds of interleaved
contenders, medians with their spread, CPU time of processes, and the JSON result.

A benchmark's result is one dict (see docs/BENCHMARKS.md for the schema):
``{"bench", "mode", "machine", "config", "rows", "bounds", "ratios", "tables", "notes"}``.
``rows``/``bounds`` hold the raw numbers (every sample); ``tables`` hold the same numbers
formatted as Markdown cells, which ``report.py`` copies into the README unchanged, so the
README shows exactly what the JSON says.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCHEMA = 1
log = logging.getLogger(__name__)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        log.debug("no /proc/cpuinfo")
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        log.debug("no /proc/meminfo")
    return None


def versions() -> dict[str, str]:
    """Versions of what the benchmarks measure (absent packages are left out)."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("faiss", "scipy", "pyarrow", "pyspark", "torch", "distributed_ondisk"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - an optional package may fail in any way
            log.debug("no version for %s", mod)
    return out


def fio_version() -> str | None:
    try:
        r = subprocess.run(["fio", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def machine() -> dict[str, Any]:
    """The hardware and software a result was measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "versions": versions(),
        "fio": fio_version(),
    }


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements (every sample kept)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "samples": []}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "n": int(a.size),
        "median": float(med),
        "min": float(a.min()),
        "max": float(a.max()),
        "q1": float(q1),
        "q3": float(q3),
        "samples": [float(x) for x in a],
    }


def rotated(names: Sequence[str], rnd: int) -> list[str]:
    """The contenders' order in round ``rnd``: rotated every round, so that no contender
    always runs in the same slot (right after a big write, first after a start...)."""
    k = rnd % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def interleave(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run every contender once per round, the order rotating; results per contender."""
    out: dict[str, list[Any]] = {name: [] for name in contenders}
    for rnd in range(rounds):
        for name in rotated(list(contenders), rnd):
            out[name].append(contenders[name]())
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    return time.process_time()


def fmt(x: float | None, digits: int = 0) -> str:
    """A figure for a table: thousands separated by thin spaces, '—' when absent."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    s = f"{x:,.{digits}f}"
    return s.replace(",", " ")


def fmt_spread(s: dict[str, Any], digits: int = 0, scale: float = 1.0) -> str:
    """'median (min–max)' of a summary."""
    if not s.get("n"):
        return "—"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    return {"title": title, "columns": list(columns), "rows": [[str(c) for c in r] for r in rows]}


def markdown(t: dict[str, Any]) -> str:
    lines = [
        "| " + " | ".join(t["columns"]) + " |",
        "|" + "---|" * len(t["columns"]),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def result(bench: str, mode: str, config: dict[str, Any]) -> dict[str, Any]:
    """An empty result of one benchmark, filled by the benchmark."""
    return {
        "schema": SCHEMA,
        "bench": bench,
        "mode": mode,
        "machine": machine(),
        "config": config,
        "rows": [],
        "bounds": [],
        "ratios": [],
        "tables": [],
        "notes": [],
        "skipped": None,
    }


def ratio(res: dict[str, Any], name: str, value: float | None, meaning: str) -> None:
    """A ratio of medians, with what it means (e.g. 'fraction of the FLOP bound')."""
    res["ratios"].append(
        {"name": name, "value": None if value is None else float(value), "meaning": meaning}
    )


def emit(res: dict[str, Any], json_path: str | None) -> None:
    """Print the result's tables (the side-by-side view) and write its JSON if asked."""
    print(
        f"# {res['bench']} ({res['mode']}): {res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores, {json.dumps(res['machine']['versions'])}"
    )
    if res.get("skipped"):
        print(f"skipped: {res['skipped']}")
    for t in res["tables"]:
        print(f"\n## {t['title']}\n{markdown(t)}")
    for n in res["notes"]:
        print(f"- {n}")
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=1) + "\n")


def mode_of(args: Any) -> str:
    return "smoke" if getattr(args, "smoke", False) else "quick" if args.quick else "full"
