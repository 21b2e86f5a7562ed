#!/usr/bin/env python3
"""Serve a subset of horizontal shards for distributed search.

    python search_server.py --shards hslices/hslice_0000_of_0004.index,hslices/hslice_0001_of_0004.index \
        --host 0.0.0.0 --port 12010 --secret-file ~/.distributed_ondisk.secret

The shards are opened and checked first; only then does the server listen, so
a server answering ping is ready.  Prints ``listening on HOST:PORT`` on stdout
(the actual port with --port 0).  Stops cleanly on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.rpc import add_secret_args, secret_from_args
from distributed_ondisk.search.server import open_search_server


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shards",
        required=True,
        nargs="+",
        help="this server's shard files or directories (comma-separated allowed)",
    )
    ap.add_argument(
        "--trained",
        help="trained index (default: the one the shards' manifests record, "
        "else trained.index next to the shards or their folder; always "
        "checked against the shards' fingerprint)",
    )
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


def main(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    sys.exit(run_main(build_parser(), main))
