"""``python -m distributed_ondisk.autobuild`` (also ``distributed-ondisk build``): build_index from the command line, with
autofaiss's option names (thin: parse, call :func:`build_index`, print the infos path)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from distributed_ondisk.cli import add_logging_args, run_main

PROG = "python -m distributed_ondisk.autobuild"


def build_parser(prog: str | None = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="build an on-disk sharded IVF index from npy or "
        "parquet embedding files, locally or on Spark",
    )
    ap.add_argument(
        "--embeddings",
        required=True,
        nargs="+",
        help="files or folders (local paths or fsspec URLs: file://, hdfs://, s3://)",
    )
    ap.add_argument(
        "--index_path",
        required=True,
        help="output faiss index file (index_path1..N with --nb_indices_to_keep "
        "N > 1; the build's parts go to INDEX_PATH.parts/)",
    )
    ap.add_argument("--index_infos_path", required=True, help="output JSON")
    ap.add_argument("--file_format", choices=["npy", "parquet"], default="npy")
    ap.add_argument("--embedding_column_name", default="embeddings")
    ap.add_argument("--id_columns", nargs="*", default=None)
    ap.add_argument(
        "--index_key",
        default=None,
        help="e.g. RR96,IVF4096_HNSW32,SQ8 "
        "(default: chosen from the data size and --max_index_memory_usage)",
    )
    ap.add_argument("--max_index_memory_usage", default="16G")
    ap.add_argument("--current_memory_available", default="32G")
    ap.add_argument("--temporary_indices_folder", default=None)
    ap.add_argument("--nb_indices_to_keep", type=int, default=1)
    ap.add_argument("--distributed", choices=["pyspark"], default=None)
    ap.add_argument("--metric_type", choices=["l2", "ip"], default="l2")
    ap.add_argument("--nb_cores", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--kmeans_niter",
        type=int,
        default=10,
        help="k-means iterations (faiss's IVF training default, as autofaiss)",
    )
    ap.add_argument(
        "--eval_queries",
        type=int,
        default=1000,
        help="queries of the recall report: a seeded sample of indexed rows",
    )
    ap.add_argument(
        "--eval_holdout",
        action="store_true",
        help="hold the last --eval_queries rows out of the index as the queries "
        "(default: every row is indexed)",
    )
    ap.add_argument("--keep_temporary", action="store_true")
    add_logging_args(ap)
    return ap


def _main(args: argparse.Namespace) -> int:
    from distributed_ondisk.autobuild.api import build_index

    kw = {
        k: v
        for k, v in vars(args).items()
        if k not in ("verbose", "quiet", "embeddings", "index_path", "index_infos_path")
    }
    _, infos = build_index(args.embeddings, args.index_path, args.index_infos_path, **kw)
    print(
        json.dumps(
            {
                "index_key": infos["index_key"],
                "nb_vectors": infos["nb_vectors"],
                "total_s": infos["total_s"],
                "infos": args.index_infos_path,
            }
        )
    )
    return 0


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``python -m distributed_ondisk.autobuild`` / ``distributed-ondisk build``."""
    return run_main(build_parser(prog or PROG), _main, argv)
