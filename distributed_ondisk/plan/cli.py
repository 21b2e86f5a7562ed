"""``python -m distributed_ondisk plan``: size a cluster for the pipeline.

Examples::

    python -m distributed_ondisk plan --n 1e9 --d 96 --nlist 1M --nodes 20 --gpus 4
    python -m distributed_ondisk plan --calibrate          # measure this machine first
    python -m distributed_ondisk plan --preset deep1b
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError

SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}

#: The seed's Deep1B run (faiss benchs/distributed_ondisk) and a 1T-vector plan.
PRESETS = {
    "deep1b": {
        "n": 10**9,
        "d": 96,
        "fmt": "fvecs",
        "nlist": 10**6,
        "n_train": 50 * 10**6,
        "niter": 20,
        "nodes": 20,
        "cores": 40,
        "gpus": 4,
        "ram_gb": 100,
        "disk_gb": 2000,
        "net_gbps": 10,
        "nvslices": 200,
        "nhslices": 50,
    },
    "1t": {
        "n": 10**12,
        "d": 96,
        "fmt": "u8bin",
        "nlist": 10**7,
        "n_train": 500 * 10**6,
        "niter": 20,
        "nodes": 200,
        "cores": 64,
        "gpus": 8,
        "ram_gb": 1024,
        "disk_gb": 30000,
        "net_gbps": 100,
    },
}


def count(text: str) -> int:
    """``1e9``, ``1M``, ``16384``, ``1.6m`` -> int."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgbt]?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 1e9, 50M, 16384)")
    return round(float(m.group(1)) * SUFFIX[m.group(2)])


def build_parser(prog: str = "distributed_ondisk plan") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a known setting")
    g = p.add_argument_group("workload")
    g.add_argument("--n", type=count, help="database vectors (default 1e9)")
    g.add_argument("--d", type=int, help="dimension (default 96)")
    g.add_argument(
        "--format", dest="fmt", help="vector file format: fvecs bvecs npy fbin u8bin ..."
    )
    g.add_argument("--nlist", type=count, help="centroids = inverted lists (default 1M)")
    g.add_argument("--sq", "--encoder", dest="encoder", help="SQ4 SQ6 SQ8 SQfp16 PQ<m> (SQ6)")
    g.add_argument("--niter", type=int, help="k-means iterations (20)")
    g.add_argument(
        "--n_train",
        type=count,
        help="k-means training rows (default: all n, " "capped at nlist * 256 like faiss)",
    )
    g.add_argument("--nprobe", type=int, help="search nprobe (64)")
    g.add_argument("--nq", type=count, help="queries to time (10000)")
    g = p.add_argument_group("cluster (per node)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--cores", type=int, help="cores per node (32)")
    g.add_argument("--gpus", type=int, help="GPUs per node for k-means (0)")
    g.add_argument("--ram_gb", type=float, help="RAM per node (256)")
    g.add_argument("--disk_gb", type=float, help="local disk per node (4000)")
    g.add_argument("--net_gbps", type=float, help="network per node, Gb/s (25)")
    g = p.add_argument_group("layout (default: suggested)")
    for name in ("kmeans_servers", "nvslices", "nhslices", "search_servers"):
        g.add_argument(f"--{name}", type=int)
    g = p.add_argument_group("rates")
    g.add_argument(
        "--calibration",
        help="calibration JSON (default: ~/.cache/distributed_ondisk/"
        "calibration.json or $DISTRIBUTED_ONDISK_CALIBRATION)",
    )
    g.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine (about a minute), store, then plan",
    )
    g.add_argument("--quick", action="store_true", help="with --calibrate: a few seconds")
    g.add_argument("--defaults", action="store_true", help="ignore any calibration file")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    add_logging_args(p)
    return p


DEFAULTS = {
    "n": 10**9,
    "d": 96,
    "fmt": "fvecs",
    "nlist": 2**20,
    "encoder": "SQ6",
    "niter": 20,
    "n_train": None,
    "nprobe": 64,
    "nq": 10_000,
    "nodes": 1,
    "cores": 32,
    "gpus": 0,
    "ram_gb": 256.0,
    "disk_gb": 4000.0,
    "net_gbps": 25.0,
    "kmeans_servers": None,
    "nvslices": None,
    "nhslices": None,
    "search_servers": None,
}


def resolve(args: argparse.Namespace) -> dict:
    v = dict(DEFAULTS)
    if args.preset:
        v.update(PRESETS[args.preset])
    v.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None})
    return v


def main(args: argparse.Namespace) -> int:
    from distributed_ondisk.plan.model import Cluster, Settings, Workload, make_plan
    from distributed_ondisk.plan.rates import DEFAULT_RATES, load_rates
    from distributed_ondisk.plan.table import format_plan

    v = resolve(args)
    if args.calibrate:
        from distributed_ondisk.plan.calibrate import calibrate, describe
        from distributed_ondisk.plan.rates import save_rates

        rates, info = calibrate(d=min(v["d"], 128), quick=args.quick)
        print(describe(rates, info))
        print(f"stored in {save_rates(rates, args.calibration)}\n")
    elif args.defaults:
        rates = DEFAULT_RATES
    else:
        rates = load_rates(args.calibration, missing_ok=args.calibration is None)
    if v["n_train"] is not None and v["n_train"] > v["n"]:
        raise InputError(f"--n_train {v['n_train']} is larger than --n {v['n']}")
    w = Workload(
        n=v["n"],
        d=v["d"],
        fmt=v["fmt"],
        nlist=v["nlist"],
        encoder=v["encoder"],
        niter=v["niter"],
        n_train=v["n_train"],
        nprobe=v["nprobe"],
        nq=v["nq"],
    )
    c = Cluster(
        nodes=v["nodes"],
        cores=v["cores"],
        gpus=v["gpus"],
        ram_gb=v["ram_gb"],
        disk_gb=v["disk_gb"],
        net_gbps=v["net_gbps"],
    )
    s = Settings(v["kmeans_servers"], v["nvslices"], v["nhslices"], v["search_servers"])
    print(format_plan(make_plan(w, c, s, rates), markdown=args.markdown))
    return 0


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_parser(prog or "distributed_ondisk plan"), main, argv)
