"""Hold N silent TCP connections to HOST:PORT for SECONDS, reopening each one the
server drops (it says its hello, then closes: we read and never answer).

    python flood.py HOST PORT N SECONDS      -> prints "opened=<count> max_open=<count>"
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import sys
import time


def main() -> None:
    host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    sel = selectors.DefaultSelector()
    opened = 0
    max_open = 0

    def open_one() -> None:
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return
        sel.register(s, selectors.EVENT_READ)
        opened += 1

    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        live = len(sel.get_map())
        max_open = max(max_open, live)
        for _ in range(min(n - live, 200)):  # renew in bursts, the loop stays responsive
            open_one()
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # dropped by the server: reopen it on the next round
                sel.unregister(s)
                s.close()
    print(f"opened={opened} max_open={max_open}", flush=True)


if __name__ == "__main__":
    main()
