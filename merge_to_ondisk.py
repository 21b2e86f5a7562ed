#!/usr/bin/env python3
"""Merge vertical slices' inverted lists [l0, l1) into one horizontal on-disk shard:
a contiguous lists file plus an index file naming it by a relative path.

Slices without a manifest (made by faiss alone, or copied without theirs) are
refused unless --adopt is given: each file is then checked (readable IVF, same
trained structure and centroids as the others and as --trained, list sizes
consistent, id ranges disjoint) and its manifest written next to it before the
merge.  --adopt without --output only adopts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.stages.merge import DEFAULT_BATCH_BYTES, MergeJob, merge_hslice
from distributed_ondisk.workdir import Workdir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", help="work directory supplying default paths")
    ap.add_argument(
        "--inputs",
        "--input",
        dest="inputs",
        nargs="+",
        help="vslice files, directories or glob patterns",
    )
    ap.add_argument("--l0", type=int, help="first list")
    ap.add_argument("--l1", type=int, help="end list (exclusive)")
    ap.add_argument("--nslice", type=int, help="number of horizontal shards (instead of l0/l1)")
    ap.add_argument("--slice_no", type=int, help="which shard, 0-based")
    ap.add_argument("--output", "--out", dest="output", help="output shard index")
    ap.add_argument("--outputIL", help="output lists file (default: next to --output, .invlists)")
    ap.add_argument("--trained", help="check the slices come from this trained index")
    ap.add_argument(
        "--nt",
        type=int,
        default=2,
        help="threads reading the slices (checks, and each batch's reads; default 2)",
    )
    ap.add_argument(
        "--batch_mb",
        type=float,
        default=DEFAULT_BATCH_BYTES / 2**20,
        help="MB of lists per batch (bounds memory)",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    ap.add_argument(
        "--adopt",
        action="store_true",
        help="check slices that have no manifest (e.g. made by faiss's "
        "make_index_vslice.py) and write their manifests next to them "
        "first; without --output, only adopt",
    )
    add_logging_args(ap)
    return ap


def main(args: argparse.Namespace) -> int:
    wd = Workdir.from_arg(args.workdir) if args.workdir else None
    inputs = args.inputs or ([str(wd.vslice_dir)] if wd else None)
    out = args.output
    if out is None and wd and args.nslice is not None and args.slice_no is not None:
        out = wd.hslice(args.slice_no, args.nslice)
    if args.batch_mb <= 0:
        raise InputError(f"--batch_mb must be positive, got {args.batch_mb}")
    if args.adopt and inputs:
        from distributed_ondisk.stages.adopt import adopt_vslices
        from distributed_ondisk.stages.merge import resolve_inputs

        adopt_vslices(
            resolve_inputs(inputs), Path(args.trained) if args.trained else None, max(1, args.nt)
        )
        if out is None:
            return 0
    if not (inputs and out):
        raise InputError("need --inputs and --output (or --workdir with --nslice/--slice_no)")
    merge_hslice(
        MergeJob(
            inputs,
            Path(out),
            Path(args.outputIL) if args.outputIL else None,
            args.l0,
            args.l1,
            args.nslice,
            args.slice_no,
            Path(args.trained) if args.trained else None,
            max(1, args.nt),
            int(args.batch_mb * 2**20),
            args.force,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(build_parser(), main))
