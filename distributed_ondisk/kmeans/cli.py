"""``distributed_kmeans.py``: k-means in process, as a server of a slice, as the
client of several servers, or the ``--test`` levels.  Flags keep the meaning
they have in faiss's classic ``distributed_kmeans.py``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.base import block_rows_for
from distributed_ondisk.kmeans.loop import KMeansConfig, KMeansResult, train_kmeans
from distributed_ondisk.kmeans.source import RowSource, resident_budget_bytes
from distributed_ondisk.ondisk.manifest import remove_stale_for, write_manifest
from distributed_ondisk.ondisk.schema import CentroidsManifest
from distributed_ondisk.rpc import add_secret_args, secret_from_args

log = logging.getLogger("distributed_kmeans")


def build_parser(prog: str | None = "distributed_kmeans.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_logging_args(p)
    g = p.add_argument_group("data")
    g.add_argument("--indata", help="training vectors (.fvecs/.bvecs/.npy/.fbin/...)")
    g.add_argument("--i0", type=int, default=0, help="first row (server mode: of the slice)")
    g.add_argument("--i1", type=int, default=None, help="end row, exclusive (default: all)")
    g = p.add_argument_group("k-means")
    g.add_argument("--k", type=int, default=None, help="number of centroids")
    g.add_argument("--niter", "--maxiter", dest="niter", type=int, default=25)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument(
        "--max_points_per_centroid",
        type=int,
        default=256,
        help="subsample to k * this many training vectors (as faiss)",
    )
    g = p.add_argument_group("compute")
    g.add_argument(
        "--gpu",
        type=int,
        default=None,
        help="-2: CPU only, -1: all GPUs, i: GPU i (default: GPUs if present)",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "faiss", "torch"),
        default="auto",
        help="auto: faiss GPU, else torch CUDA, else faiss CPU; torch: the torch "
        "backend only (with --gpu -2 on torch's CPU device; needs the "
        "[torch] extra)",
    )
    g.add_argument("--nt", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument(
        "--lloyd",
        action="store_true",
        help="plain Lloyd assignment (the default until the bounded one is faster in wall time)",
    )
    g.add_argument(
        "--accel",
        action="store_true",
        help="the exact bounded assignment that skips distances which cannot change an "
        "assignment (opt-in: on shared cores it measured 1.04x Lloyd's wall time)",
    )
    g.add_argument(
        "--bound_gb",
        type=float,
        default=None,
        help="server/in-process: memory for the per-row bounds of the accelerated "
        "assignment (default 2 GiB: 5M rows get about 100 centroid groups)",
    )
    g = p.add_argument_group("server mode")
    g.add_argument("--server", action="store_true", help="serve the [i0, i1) slice")
    g.add_argument(
        "--host",
        default=None,
        help="interface to listen on (default: all; loopback with --insecure)",
    )
    g.add_argument("--port", type=int, default=12345)
    g.add_argument("--when_ready", metavar="FILE", help="write host:port here once listening")
    g.add_argument("--ipv4", action="store_true", help="listen on IPv4 only")
    g = p.add_argument_group("client mode")
    g.add_argument("--client", action="store_true", help="run the loop over --servers")
    g.add_argument("--servers", default="", help='"host1:port1 host2:port2 ..." ([v6]:port ok)')
    g.add_argument("--servers_file", help="file listing host:port, whitespace separated")
    g.add_argument(
        "--wait_servers",
        type=float,
        default=300.0,
        help="seconds to wait for all servers to answer",
    )
    g.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds a server may take to answer one call"
    )
    g.add_argument(
        "--reduce",
        choices=("auto", "plain", "tree"),
        default="auto",
        help="plain: the client adds every server's reply; tree: the servers add their "
        "sums among themselves and the client sends and receives one k x d message "
        "per iteration; auto: the tree from 8 servers on",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", help="centroids file (.npy, .fvecs, ...), written atomically")
    g.add_argument("--checkpoint", help="checkpoint file (.npz) written after every iteration")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    g.add_argument(
        "--store_each_iteration",
        action="store_true",
        help="rewrite --out after every iteration; checkpoint next to it",
    )
    g = p.add_argument_group("self-test")
    g.add_argument(
        "--test",
        default=None,
        metavar="LEVELS",
        help="comma-separated levels: 0 faiss.Kmeans, 1 this loop in process, "
        "2 in-process shards, 3 local servers over RPC",
    )
    g.add_argument("--nservers", type=int, default=2, help="shards/servers of --test 2 and 3")
    add_secret_args(p)
    return p


def read_servers(args: argparse.Namespace) -> list[str]:
    text = args.servers or ""
    if args.servers_file:
        try:
            text += " " + Path(args.servers_file).read_text()
        except OSError as e:
            raise InputError(f"cannot read --servers_file {args.servers_file}: {e}") from e
    servers = text.split()
    if not servers:
        raise InputError('--client needs --servers "host:port ..." or --servers_file')
    return servers


def _source(args: argparse.Namespace) -> RowSource:
    if not args.indata:
        raise InputError("--indata is required (or use --client with --servers)")
    return RowSource(args.indata, args.i0, args.i1)


def _checkpoint_path(args: argparse.Namespace) -> str | None:
    if args.checkpoint:
        return args.checkpoint
    if args.store_each_iteration:
        if not args.out:
            raise InputError("--store_each_iteration needs --out")
        return args.out + ".checkpoint.npz"
    return None


def bound_bytes_of(args: argparse.Namespace) -> int | None:
    if args.bound_gb is None:
        return None
    if not args.bound_gb > 0:
        raise InputError(f"--bound_gb must be > 0, got {args.bound_gb}")
    return int(args.bound_gb * (1 << 30))


def write_centroids(path: str, centroids: np.ndarray) -> None:
    """Atomic write of the centroids (also used after every iteration)."""
    from distributed_ondisk.vectors import write_vectors

    write_vectors(path, centroids)


def run_loop(args: argparse.Namespace, data: Any) -> KMeansResult:
    if args.k is None:
        raise InputError("--k is required")
    cfg = KMeansConfig(
        args.k,
        args.niter,
        args.seed,
        args.max_points_per_centroid,
        lloyd=args.lloyd or not args.accel,
    )
    each = (lambda it, c: write_centroids(args.out, c)) if args.store_each_iteration else None
    checkpoint = _checkpoint_path(args)
    # A killed earlier run may have left temporaries of these outputs: a rerun removes
    # them (only these files' own, since parallel jobs may write next to them).
    for path in (args.out, checkpoint):
        if path:
            remove_stale_for(path)
    res = train_kmeans(data, cfg, checkpoint=checkpoint, resume=args.resume, on_iteration=each)
    if args.out:
        write_centroids(args.out, res.centroids)
        # Written last: its presence says the run finished (the pipeline skips on it),
        # and it carries the objective into the pipeline's report.
        m = CentroidsManifest(
            k=cfg.k,
            d=int(res.centroids.shape[1]),
            niter=cfg.niter,
            seed=cfg.seed,
            max_points_per_centroid=cfg.max_points_per_centroid,
            objective=float(res.objective),
        )
        write_manifest(args.out, m, {"centroids": args.out})
        log.info(
            "wrote %d centroids to %s (objective %.6g)", len(res.centroids), args.out, res.objective
        )
    else:
        log.warning("no --out: centroids not saved (objective %.6g)", res.objective)
    return res


def main_server(args: argparse.Namespace) -> int:
    from distributed_ondisk.kmeans.backend import build_dataset, choose_backend
    from distributed_ondisk.kmeans.remote import serve_dataset

    secret = secret_from_args(args)
    backend = choose_backend(args.gpu, args.backend)  # a missing torch/GPU: before the scan
    source = _source(args)
    log.info("checking %s for NaN/Inf", source.describe())
    source.check_finite(block_rows_for(source.d), keep_bytes=resident_budget_bytes())
    ds = build_dataset(backend, source, args.nt, bound_bytes_of(args))
    host = args.host or ("127.0.0.1" if secret is None else ("0.0.0.0" if args.ipv4 else "::"))
    serve_dataset(
        ds,
        host=host,
        port=args.port,
        secret=secret,
        insecure=secret is None,
        when_ready=args.when_ready,
        name=f"kmeans[{source.describe()}]",
    )
    return 0


def main_client(args: argparse.Namespace) -> int:
    from distributed_ondisk.kmeans.remote import connect_servers

    if args.k is None:
        raise InputError("--k is required")
    data = connect_servers(
        read_servers(args),
        secret=secret_from_args(args),
        wait_s=args.wait_servers,
        timeout=args.timeout,
        reduce=args.reduce,
    )
    try:
        run_loop(args, data)
    finally:
        data.close()
    return 0


def main_args(args: argparse.Namespace) -> int:
    if args.server and args.client:
        raise InputError("--server and --client exclude each other")
    if args.test is not None:
        from distributed_ondisk.kmeans.testlevels import run_test_levels

        return run_test_levels(args)
    if args.server:
        return main_server(args)
    if args.client:
        return main_client(args)
    from distributed_ondisk.kmeans.backend import build_dataset, choose_backend

    backend = choose_backend(args.gpu, args.backend)
    source = _source(args)
    if args.k is None:
        raise InputError("--k is required")
    try:
        KMeansConfig(args.k, args.niter, args.seed, args.max_points_per_centroid).validate(source.n)
    except InputError as e:  # name the data: "k > n" is about this file
        raise InputError(f"{source.describe()}: {e}") from e
    source.check_finite(block_rows_for(source.d), keep_bytes=resident_budget_bytes())
    run_loop(args, build_dataset(backend, source, args.nt, bound_bytes_of(args)))
    return 0


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``distributed_kmeans.py`` / ``distributed-ondisk kmeans``."""
    return run_main(build_parser(prog or "distributed_kmeans.py"), main_args, argv)


main = cli  # the name tests (and older callers) import


if __name__ == "__main__":
    sys.exit(cli())  # kmeans/local.py starts servers as python -m of this module
