#!/usr/bin/env python3
"""Search horizontal on-disk shards as one index and report recall and QPS per nprobe.

    python combined_index.py --shards WORKDIR/hslices --queries q.fvecs --k 10 \
        --nprobe 1,4,16,64 [--gt gt.ivecs | --database base.fvecs] \
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

from __future__ import annotations

import argparse
import json
import sys

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    from distributed_ondisk.rpc import add_secret_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shards",
        required=True,
        nargs="+",
        help="shard files or a directory of them (comma-separated allowed)",
    )
    ap.add_argument(
        "--trained",
        help="trained index (default: the one the shards' manifests record, "
        "else trained.index next to the shards or their folder; always "
        "checked against the shards' fingerprint)",
    )
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


def main(args: argparse.Namespace) -> int:
    import faiss

    from distributed_ondisk import evaluate as ev
    from distributed_ondisk.atomic import atomic_write_text
    from distributed_ondisk.search.combined import CombinedIndex
    from distributed_ondisk.vectors import read_vectors

    if args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    if args.plot:  # before the ground truth and the searches, not after them
        from distributed_ondisk.extras import require

        require("plot", "--plot")
    nprobes = ev.parse_int_list(args.nprobe)
    ci = CombinedIndex(args.shards, trained=args.trained)
    xq = read_vectors(args.queries)
    if xq.shape[1] != ci.d:
        raise InputError(f"queries {args.queries} have d={xq.shape[1]}, the index has d={ci.d}")
    gt = None
    if args.gt:
        gt = ev.load_ground_truth(args.gt, len(xq))
    elif args.database:
        metric = "ip" if ci.keep_max else "l2"
        gt = ev.ground_truth(
            args.database, args.queries, 100, metric=metric, rows=args.database_rows
        )
    ef = args.ef_search

    def on_disk(x, k, nprobe):
        return ci.search(x, k, nprobe=nprobe, ef_search=ef)

    points = ev.evaluate("on-disk", on_disk, xq, args.k, nprobes, gt)
    if args.in_ram:
        ram = ci.to_ram()
        ram_ivf = faiss.extract_index_ivf(ram)

        def in_ram(x, k, nprobe):
            xt = ci.transform(x)
            params = faiss.SearchParametersIVF(
                nprobe=nprobe,
                quantizer_params=(faiss.SearchParametersHNSW(efSearch=ef) if ef else None),
            )
            return ram_ivf.search(xt, k, params=params)

        points = ev.evaluate("in-RAM", in_ram, xq, args.k, nprobes, gt) + points
    if args.servers:
        from distributed_ondisk.rpc import secret_from_args
        from distributed_ondisk.search.client import DistributedSearchClient

        # the trained index found (and checked) above: no need to fetch it from a server
        with DistributedSearchClient(
            args.servers.split(","), secret=secret_from_args(args), trained=str(ci.trained_path)
        ) as client:

            def distributed(x, k, nprobe):
                return tuple(client.search(x, k, nprobe=nprobe, ef_search=ef))

            points += ev.evaluate("distributed", distributed, xq, args.k, nprobes, gt)
    print(
        f"{ci.ntotal} vectors in {len(ci.shards)} shard(s), nlist {ci.nlist}, "
        f"{len(xq)} queries, k={args.k}, {faiss.omp_get_max_threads()} threads"
    )
    print(ev.format_table(points))
    if gt is None:
        print("(no --gt or --database: recall not measured)")
    if args.plot:
        ev.plot_curves(points, args.plot, title=f"{ci.ntotal} vectors, nlist {ci.nlist}")
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps(
                [
                    {
                        "variant": p.variant,
                        "nprobe": p.nprobe,
                        "nq": p.nq,
                        "seconds": p.seconds,
                        "qps": p.qps,
                        "recall": p.recall,
                        "recall_10_at_10": p.recall_10_at_10,
                        **({"queries": args.queries_label} if args.queries_label else {}),
                    }
                    for p in points
                ],
                indent=1,
            )
            + "\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(build_parser(), main))
