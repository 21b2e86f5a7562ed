"""`rpc.py` subcommands: keygen, ping, methods, serve-echo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.rpc.client import Client, wait_ready
from distributed_ondisk.rpc.demo import EchoService
from distributed_ondisk.rpc.preauth import DEFAULT_MAX_PENDING, DEFAULT_PREAUTH_TIMEOUT
from distributed_ondisk.rpc.secret import add_secret_args, secret_from_args, write_secret_file
from distributed_ondisk.rpc.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_SEND_TIMEOUT, Server


def _add_encryption_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-encryption",
        action="store_true",
        help="authenticate but do not encrypt (both sides must say so; also "
        "DISTRIBUTED_ONDISK_RPC_PLAINTEXT=1)",
    )


def build_parser(prog: str | None = "rpc.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="write a new shared secret file (mode 0600)")
    p.add_argument("path")
    p.add_argument("--force", action="store_true", help="replace an existing file")

    p = sub.add_parser("ping", help="wait until a server answers (exit 0), for launch scripts")
    p.add_argument("address", help="HOST:PORT or [IPv6]:PORT")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to keep trying")
    add_secret_args(p)
    _add_encryption_arg(p)

    p = sub.add_parser("methods", help="list the methods a server exposes")
    p.add_argument("address")
    p.add_argument("--timeout", type=float, default=30.0)
    add_secret_args(p)
    _add_encryption_arg(p)

    p = sub.add_parser("serve-echo", help="serve a small echo service (smoke tests)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    add_secret_args(p)
    _add_encryption_arg(p)
    g = p.add_argument_group("server limits")
    g.add_argument(
        "--handshake-timeout",
        type=float,
        default=DEFAULT_PREAUTH_TIMEOUT,
        help="seconds an unauthenticated connection may take to authenticate",
    )
    g.add_argument(
        "--max-pending",
        type=int,
        default=DEFAULT_MAX_PENDING,
        help="unauthenticated connections held at once (the stalest is dropped)",
    )
    g.add_argument("--max-connections", type=int, default=1000)
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="seconds an authenticated connection may send nothing",
    )
    g.add_argument(
        "--send-timeout",
        type=float,
        default=DEFAULT_SEND_TIMEOUT,
        help="seconds (plus 1 per 10 MB) a reply may take to be taken",
    )
    g.add_argument(
        "--debug-errors",
        action="store_true",
        help="send full tracebacks to peers (default: type and message only)",
    )
    return parser


def main_args(args: argparse.Namespace) -> int:
    if args.command == "keygen":
        write_secret_file(args.path, force=args.force)
        print(f"wrote a new secret to {args.path} (mode 0600)", file=sys.stderr)
        return 0
    secret = secret_from_args(args)
    if args.command == "ping":
        wait_ready(
            args.address,
            secret=secret,
            timeout=args.timeout,
            encrypt=False if args.no_encryption else None,
        )
        return 0
    if args.command == "methods":
        with Client(
            args.address,
            secret=secret,
            timeout=args.timeout,
            connect_timeout=args.timeout,
            encrypt=False if args.no_encryption else None,
        ) as client:
            print("\n".join(client.methods()))
        return 0
    server = Server(
        EchoService(),
        host=args.host,
        port=args.port,
        secret=secret,
        allow_insecure_loopback=args.insecure,
        name="echo",
        encrypt=False if args.no_encryption else None,
        handshake_timeout=args.handshake_timeout,
        max_pending=args.max_pending,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        send_timeout=args.send_timeout,
        debug_errors=True if args.debug_errors else None,
    ).start()
    print(server.address, flush=True)  # launch scripts and tests read the actual port
    server.serve_forever()
    return 0


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``rpc.py`` / ``distributed-ondisk rpc``."""
    return run_main(build_parser(prog or "rpc.py"), main_args, argv)


if __name__ == "__main__":
    sys.exit(cli())
