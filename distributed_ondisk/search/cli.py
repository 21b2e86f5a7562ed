"""Command lines of the search side: ``search`` (combined_index.py: recall and QPS
of the shards per nprobe) and ``serve`` (search_server.py: serve some shards for
distributed search).

The top-level scripts and ``distributed-ondisk search|serve`` both call
:func:`search_cli` / :func:`serve_cli`: one code path, the same flags.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.rpc import add_secret_args, secret_from_args

# The scripts' docstrings are these texts too (tests/test_cli.py checks they agree);
# the first paragraph is the parser's description.
SEARCH_DOC = """Search horizontal on-disk shards as one index and report recall and QPS per nprobe.

    python combined_index.py --shards WORKDIR/hslices --queries q.fvecs --k 10 \\
        --nprobe 1,4,16,64 [--gt gt.ivecs | --database base.fvecs] \\
        [--in-ram] [--servers h1:p1,h2:p2 --secret-file S] [--plot curves.png]

Shards are opened read-only and must together cover every inverted list once,
from one trained index; a missing shard is named (h1 of 4, its lists).  Shard
files hold only the inverted lists: the trained index (transform + coarse
quantizer) is found where the shards' manifests record it, or given with
--trained.  recall@r is the fraction of queries whose true nearest neighbour is
in the first r results (r <= k); 10-R@10 is the share of the true 10 nearest
found in the first 10 (not trivially 1 when the queries are indexed rows).
Without --gt, the ground truth is
computed from --database by brute force and cached next to the queries.
"""

SERVE_DOC = """Serve a subset of horizontal shards for distributed search.

    python search_server.py --shards hslices/hslice_0000_of_0004.index,hslices/hslice_0001_of_0004.index \\
        --host 0.0.0.0 --port 12010 --secret-file ~/.distributed_ondisk.secret

The shards are opened and checked first; only then does the server listen, so
a server answering ping is ready.  Prints ``listening on HOST:PORT`` on stdout
(the actual port with --port 0).  Stops cleanly on SIGTERM / Ctrl-C.
"""

_TRAINED_HELP = (
    "trained index (default: the one the shards' manifests record, "
    "else trained.index next to the shards or their folder; always "
    "checked against the shards' fingerprint)"
)


def _summary(doc: str) -> str:
    return doc.split("\n\n")[0]


# -- search -------------------------------------------------------------------------


def build_search_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=_summary(SEARCH_DOC))
    ap.add_argument(
        "--shards",
        required=True,
        nargs="+",
        help="shard files or a directory of them (comma-separated allowed)",
    )
    ap.add_argument("--trained", help=_TRAINED_HELP)
    ap.add_argument("--queries", required=True, help="query vectors")
    ap.add_argument("--k", type=int, default=10, help="neighbours per query")
    ap.add_argument("--nprobe", default="1,4,16,64", help="comma-separated nprobe values")
    ap.add_argument("--ef-search", type=int, help="HNSW efSearch of the coarse quantizer")
    ap.add_argument("--gt", help="ground-truth ids (.ivecs)")
    ap.add_argument("--database", help="database vectors, to compute (and cache) ground truth")
    ap.add_argument(
        "--database-rows",
        type=int,
        help="only the first N rows of --database are indexed (held-out queries)",
    )
    ap.add_argument(
        "--in-ram",
        action="store_true",
        help="also evaluate an in-RAM copy of the index (needs RAM for all codes)",
    )
    ap.add_argument("--servers", help="also evaluate distributed search on these search servers")
    ap.add_argument("--plot", help="write recall / QPS curves to this PNG")
    ap.add_argument("--json", help="write the measured points to this JSON file")
    ap.add_argument(
        "--queries-label",
        help="where the queries come from, recorded with each "
        "point (e.g. 'sample of 1000 indexed rows, seed 1234')",
    )
    add_secret_args(ap)
    add_logging_args(ap)
    return ap


def search_main(args: argparse.Namespace) -> int:
    from distributed_ondisk.atomic import atomic_write_text
    from distributed_ondisk.evaluate import parse_int_list
    from distributed_ondisk.search.evaluation import evaluate_search, report_rows

    if args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    if args.plot:  # before the ground truth and the searches, not after them
        from distributed_ondisk.extras import require

        require("plot", "--plot")
    result = evaluate_search(
        args.shards,
        args.queries,
        k=args.k,
        nprobes=parse_int_list(args.nprobe),
        trained=args.trained,
        ef_search=args.ef_search,
        gt=args.gt,
        database=args.database,
        database_rows=args.database_rows,
        in_ram=args.in_ram,
        servers=args.servers.split(",") if args.servers else (),
        # read only when servers are asked for: a local evaluation needs no secret
        secret=secret_from_args(args) if args.servers else None,
    )
    print(result.text())
    if args.plot:
        result.plot(args.plot)
    if args.json:
        rows = report_rows(result.points, args.queries_label)
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


def search_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_search_parser(prog), search_main, argv)


# -- serve --------------------------------------------------------------------------


def build_serve_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=_summary(SERVE_DOC))
    ap.add_argument(
        "--shards",
        required=True,
        nargs="+",
        help="this server's shard files or directories (comma-separated allowed)",
    )
    ap.add_argument("--trained", help=_TRAINED_HELP)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    ap.add_argument(
        "--when_ready",
        metavar="FILE",
        help="write HOST:PORT to FILE (atomically) once the server answers",
    )
    ap.add_argument(
        "--checksums",
        action="store_true",
        help="verify the shards' sha256 against their manifests before serving",
    )
    add_secret_args(ap)
    add_logging_args(ap)
    return ap


def serve_main(args: argparse.Namespace) -> int:
    from distributed_ondisk.atomic import atomic_write_text
    from distributed_ondisk.search.server import open_search_server

    secret = secret_from_args(args)
    server = open_search_server(
        args.shards,
        trained=args.trained,
        host=args.host,
        port=args.port,
        secret=secret,
        allow_insecure_loopback=args.insecure,
        checksums=args.checksums,
    )
    print(f"listening on {server.address}", flush=True)
    if args.when_ready:
        atomic_write_text(args.when_ready, server.address + "\n")
    server.serve_forever()
    return 0


def serve_cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_main(build_serve_parser(prog), serve_main, argv)
