"""Blocking socket I/O with an absolute deadline: the one place that loops on send/recv."""

from __future__ import annotations

import socket
import time

from distributed_ondisk.errors import ConnectionLost

IOV_MAX = 512


def wait(sock: socket.socket, deadline: float | None) -> None:
    """Set the socket timeout to what is left before ``deadline``; None leaves the
    socket's own timeout as it is."""
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock.settimeout(remaining)


def send_views(sock: socket.socket, views: list[memoryview], deadline: float | None) -> None:
    """Send every byte of ``views`` (gathered with sendmsg, nothing joined)."""
    if len(views) == 1:
        wait(sock, deadline)
        sock.sendall(views[0])
        return
    views = list(views)
    i = 0
    while i < len(views):
        wait(sock, deadline)
        sent = sock.sendmsg(views[i : i + IOV_MAX])
        while sent and i < len(views):
            n = views[i].nbytes
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0


def recv_into(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    """Fill ``view`` exactly; ConnectionLost if the peer closes first."""
    pos, total = 0, view.nbytes
    while pos < total:
        wait(sock, deadline)
        n = sock.recv_into(view[pos:], total - pos)
        if n == 0:
            raise ConnectionLost(
                f"connection closed by peer after {pos} of {total} bytes"
                if pos
                else "connection closed by peer"
            )
        pos += n
