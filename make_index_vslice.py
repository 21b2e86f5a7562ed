#!/usr/bin/env python3
"""Fill a copy of the trained index with rows [i0, i1) of the data (ids = row numbers)
and write it as one vertical slice, with a manifest.  Skips a finished slice."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.stages.vslice import DEFAULT_BLOCK_ROWS, VsliceJob, make_vslice
from distributed_ondisk.workdir import Workdir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", help="work directory supplying default paths")
    ap.add_argument("--inputindex", help="trained index")
    ap.add_argument("--input", "--indata", dest="input", help="data vectors")
    ap.add_argument("--i0", type=int, help="first row")
    ap.add_argument("--i1", type=int, help="end row (exclusive)")
    ap.add_argument("--nslice", type=int, help="number of vertical slices (instead of i0/i1)")
    ap.add_argument("--slice_no", type=int, help="which slice, 0-based")
    ap.add_argument("-o", "--out", help="output vslice index")
    ap.add_argument("--nt", type=int, default=0, help="threads (default: all cores)")
    ap.add_argument(
        "--bs",
        type=int,
        default=DEFAULT_BLOCK_ROWS,
        help="rows read and added " "per block (bounds memory)",
    )
    ap.add_argument(
        "--keepquantizer",
        action="store_true",
        help="store the coarse quantizer's content in the slice too",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    add_logging_args(ap)
    return ap


def main(args: argparse.Namespace) -> int:
    wd = Workdir.from_arg(args.workdir) if args.workdir else None
    trained = args.inputindex or (wd and wd.trained)
    data = args.input or (wd and wd.data())
    out = args.out
    if out is None and wd and args.nslice is not None and args.slice_no is not None:
        out = wd.vslice(args.slice_no, args.nslice)
    if not (trained and data and out):
        raise InputError(
            "need --inputindex, --input and -o (or --workdir with --nslice/--slice_no)"
        )
    make_vslice(
        VsliceJob(
            Path(trained),
            Path(data),
            Path(out),
            args.i0,
            args.i1,
            args.nslice,
            args.slice_no,
            args.bs,
            args.nt,
            args.keepquantizer,
            args.force,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(build_parser(), main))
