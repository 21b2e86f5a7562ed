"""Command lines of stages 2-4: ``train`` (make_trained_index.py), ``vslice``
(make_index_vslice.py) and ``merge`` (merge_to_ondisk.py).

Each stage has ``build_*_parser(prog)``, ``*_main(args)`` and ``*_cli(argv, prog)``;
the top-level scripts and ``distributed-ondisk <stage>`` both call ``*_cli``, so a
pip-installed toolkit runs the same code with the same flags as a checkout.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.stages.merge import DEFAULT_BATCH_BYTES, MergeJob, merge_hslice
from distributed_ondisk.stages.train import ROTATIONS, TrainedIndexConfig, make_trained_index
from distributed_ondisk.stages.vslice import DEFAULT_BLOCK_ROWS, VsliceJob, make_vslice
from distributed_ondisk.workdir import Workdir

# The scripts' docstrings are these texts too (tests/test_cli.py checks they agree):
# ``--help`` prints the same description from the script and from the subcommand.
TRAIN_DOC = """Build the empty trained index IVF<k>_HNSW32,SQ6 (behind a random rotation) from
k-means centroids and a training sample of the data."""

VSLICE_DOC = """Fill a copy of the trained index with rows [i0, i1) of the data (ids = row numbers)
and write it as one vertical slice, with a manifest.  Skips a finished slice."""

MERGE_DOC = """Merge vertical slices' inverted lists [l0, l1) into one horizontal on-disk shard:
a contiguous lists file plus an index file naming it by a relative path.

Slices without a manifest (made by faiss alone, or copied without theirs) are
refused unless --adopt is given: each file is then checked (readable IVF, same
trained structure and centroids as the others and as --trained, list sizes
consistent, id ranges disjoint) and its manifest written next to it before the
merge.  --adopt without --output only adopts."""


def _workdir(args: argparse.Namespace) -> Workdir | None:
    return Workdir.from_arg(args.workdir) if args.workdir else None


# -- train (stage 2) ---------------------------------------------------------------


def build_train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=TRAIN_DOC)
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


def train_main(args: argparse.Namespace) -> int:
    import faiss

    wd = _workdir(args)
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


def train_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_train_parser(prog), train_main, argv)


# -- vslice (stage 3) --------------------------------------------------------------


def build_vslice_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=VSLICE_DOC)
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
        help="rows read and added per block (bounds memory)",
    )
    ap.add_argument(
        "--keepquantizer",
        action="store_true",
        help="store the coarse quantizer's content in the slice too",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    add_logging_args(ap)
    return ap


def vslice_main(args: argparse.Namespace) -> int:
    wd = _workdir(args)
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


def vslice_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_vslice_parser(prog), vslice_main, argv)


# -- merge (stage 4) ---------------------------------------------------------------


def build_merge_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=MERGE_DOC)
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


def merge_main(args: argparse.Namespace) -> int:
    wd = _workdir(args)
    inputs = args.inputs or ([str(wd.vslice_dir)] if wd else None)
    out = args.output
    if out is None and wd and args.nslice is not None and args.slice_no is not None:
        out = wd.hslice(args.slice_no, args.nslice)
    if args.batch_mb <= 0:
        raise InputError(f"--batch_mb must be positive, got {args.batch_mb}")
    trained = Path(args.trained) if args.trained else None
    if args.adopt and inputs:
        from distributed_ondisk.stages.adopt import adopt_vslices
        from distributed_ondisk.stages.merge import resolve_inputs

        adopt_vslices(resolve_inputs(inputs), trained, max(1, args.nt))
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
            trained,
            max(1, args.nt),
            int(args.batch_mb * 2**20),
            args.force,
        )
    )
    return 0


def merge_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_merge_parser(prog), merge_main, argv)
