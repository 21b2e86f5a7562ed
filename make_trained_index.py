#!/usr/bin/env python3
"""Build the empty trained index IVF<k>_HNSW32,SQ6 (behind a random rotation) from
k-means centroids and a training sample of the data."""

from __future__ import annotations

import argparse
import sys

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.stages.train import ROTATIONS, TrainedIndexConfig, make_trained_index
from distributed_ondisk.workdir import Workdir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", help="work directory supplying default paths")
    ap.add_argument("--centroids", help="k x d float32 .npy from distributed_kmeans.py")
    ap.add_argument("--indata", help="data vectors (training sample is rows [i0, i1))")
    ap.add_argument("--i0", type=int, help="first training row (default 0)")
    ap.add_argument("--i1", type=int, help="end of training rows (default: all rows)")
    ap.add_argument("--out", "-o", help="output trained index")
    ap.add_argument("--rotation", choices=ROTATIONS, default="random")
    ap.add_argument("--seed", type=int, default=1234, help="random rotation seed")
    ap.add_argument(
        "--sq",
        "--encoder",
        dest="encoder",
        default="SQ6",
        help="SQ4 | SQ6 | SQ8 | SQfp16 | PQ<m>[x<nbits>] (default SQ6)",
    )
    ap.add_argument("--opq_m", type=int, help="OPQ sub-spaces (with --rotation opq)")
    ap.add_argument("--efSearch", type=int, default=128, help="HNSW efSearch of the quantizer")
    ap.add_argument("--efConstruction", type=int, default=200)
    ap.add_argument("--nt", type=int, default=0, help="threads (default: all cores)")
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    add_logging_args(ap)
    return ap


def main(args: argparse.Namespace) -> int:
    import faiss

    wd = Workdir.from_arg(args.workdir) if args.workdir else None
    centroids = args.centroids or (wd and wd.centroids)
    indata = args.indata or (wd and wd.data())
    out = args.out or (wd and wd.trained)
    if not (centroids and indata and out):
        raise InputError("need --centroids, --indata and --out (or --workdir)")
    if args.nt > 0:
        faiss.omp_set_num_threads(args.nt)
    cfg = TrainedIndexConfig(
        encoder=args.encoder,
        rotation=args.rotation,
        seed=args.seed,
        ef_search=args.efSearch,
        ef_construction=args.efConstruction,
        opq_m=args.opq_m,
    )
    make_trained_index(centroids, indata, out, cfg, args.i0, args.i1, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(build_parser(), main))
