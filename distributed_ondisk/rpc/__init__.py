"""Authenticated, encrypted RPC over TCP with a data-only codec (see docs/CONTRACTS.md).

Server(obj, secret=...) exposes ``obj.RPC_METHODS``; Client(address, secret=...)
calls them.  Handshake: mutual HMAC-SHA256 before anything is decoded (auth.py,
run for the server in a bounded thread-less pool, preauth.py); then AES-256-GCM
sealed records with per-connection, per-direction keys (session.py); payloads
are decoded by codec.py, which builds data only; numpy arrays travel as raw
out-of-band buffers.
"""

from distributed_ondisk.rpc.address import parse_address
from distributed_ondisk.rpc.client import Client, wait_ready
from distributed_ondisk.rpc.codec import register_message_type
from distributed_ondisk.rpc.secret import (
    add_secret_args,
    generate_secret,
    load_secret,
    secret_from_args,
    write_secret_file,
)
from distributed_ondisk.rpc.server import Server

__all__ = [
    "Client",
    "Server",
    "add_secret_args",
    "generate_secret",
    "load_secret",
    "parse_address",
    "register_message_type",
    "secret_from_args",
    "wait_ready",
    "write_secret_file",
]
