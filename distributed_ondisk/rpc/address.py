"""Addresses as one string: "host:port", "[v6addr]:port"."""

from __future__ import annotations

import ipaddress
import socket

from distributed_ondisk.errors import InputError


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" or "[::1]:port" into (host, port) with a clear error."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InputError(f"bad address {address!r}: expected [IPv6]:PORT, e.g. [::1]:12345")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise InputError(
                f"bad address {address!r}: expected HOST:PORT, e.g. " f"127.0.0.1:12345"
            )
        if ":" in host:
            raise InputError(
                f"bad address {address!r}: write IPv6 addresses in brackets, "
                f"e.g. [{host}]:{port_text}"
            )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise InputError(f"bad port in address {address!r}: expected 0..65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addrs = {info[4][0].split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)
