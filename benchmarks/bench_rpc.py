#!/usr/bin/env python3
"""RPC on loopback: this toolkit's RPC (authenticated; plain and encrypted) vs
faiss.contrib.rpc vs a raw socket.

One run prints one table: small-call round trip (median, p99) and throughput of
float32 arrays of 1 MB and 100 MB in both directions (argument client->server,
result server->client).  Each server runs in its own process.  "this rpc" runs
with --no-encryption (authenticated only), "encrypted" with the default sealed
records (AES-256-GCM).

    python benchmarks/bench_rpc.py [--quick | --smoke] [--json OUT]

The secret is passed to the servers as DISTRIBUTED_ONDISK_SECRET; any exported
DISTRIBUTED_ONDISK_SECRET_FILE is not passed on (a server refuses two sources).

faiss.contrib.rpc as shipped cannot unpickle arrays under numpy 2 (its allowlist
lacks ``numpy._core``); this benchmark widens that allowlist in both its processes.
It is otherwise used as shipped (no TCP_NODELAY).

The bounds, measured in the same run: the loopback limit (a bare socket server:
header and payload in one ``sendmsg``, received by one ``recv_into`` with
MSG_WAITALL into a preallocated buffer) and memcpy bandwidth.  The contenders are
interleaved over ``--rounds`` rounds (order rotating); medians and ranges.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"1 MB": 250_000, "100 MB": 25_000_000}  # float32 element counts
TINY_SIZES = {"1 KB": 250, "100 KB": 25_000}  # --tiny: a smoke run of every path
KINDS = ("ours", "encrypted", "faiss", "raw")


# -- servers (each started as `bench_rpc.py --serve KIND` in its own process) ---------
class _Service:
    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}

    def echo(self, x):
        return x

    def nbytes(self, x):
        return int(x.nbytes)

    def make_array(self, n):
        if n not in self.arrays:
            self.arrays = {n: np.arange(n, dtype=np.float32)}
        return self.arrays[n]


def _widen_faiss_allowlist() -> None:
    import faiss.contrib.rpc as frpc

    frpc.safe_modules.update({"numpy._core.multiarray", "numpy._core.numeric", "numpy.dtypes"})


def serve_faiss() -> None:
    import faiss.contrib.rpc as frpc

    _widen_faiss_allowlist()

    devnull = open(os.devnull, "w")  # noqa: SIM115 - the servers' log for the process's life

    class Handler(frpc.Server):
        def __init__(self, sock):
            super().__init__(sock, logf=devnull)
            self.svc = _Service()

        def echo(self, x):
            return self.svc.echo(x)

        def nbytes(self, x):
            return self.svc.nbytes(x)

        def make_array(self, n):
            return self.svc.make_array(n)

    listener = socket.create_server(("127.0.0.1", 0))
    print(f"127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=Handler(conn).exec_loop, daemon=True).start()


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view``: one ``recv_into`` with MSG_WAITALL (the kernel loops, not Python);
    the loop only runs again if a signal cut the wait short."""
    pos = 0
    while pos < len(view):
        n = sock.recv_into(view[pos:], len(view) - pos, socket.MSG_WAITALL)
        if not n:
            raise ConnectionError("closed")
        pos += n


def _send_all(sock: socket.socket, *parts: memoryview) -> None:
    """Header and payload in one ``sendmsg`` (one system call, no copy into one buffer);
    only a partial send (a signal) makes it loop."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def serve_raw() -> None:
    """The loopback limit.  Protocol: 9-byte request (op, n).  op 0: echo n; op 1:
    receive n bytes, reply 8; op 2: send n bytes (from a buffer ready in advance)."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"127.0.0.1:{listener.getsockname()[1]}", flush=True)
    req = bytearray(9)
    out = np.arange(max(SIZES.values()), dtype=np.float32).view(np.uint8)  # covers TINY too
    inbuf = np.empty(out.nbytes, dtype=np.uint8)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                _recv_exact(conn, memoryview(req))
                op, n = struct.unpack("<BQ", req)
                if op == 1:
                    _recv_exact(conn, memoryview(inbuf)[:n])
                    conn.sendall(struct.pack("<Q", n))
                elif op == 2:
                    conn.sendall(memoryview(out)[:n])
                else:
                    conn.sendall(struct.pack("<Q", n))
        except ConnectionError:
            conn.close()


# -- clients ---------------------------------------------------------------------
class RawClient:
    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.small = bytearray(8)
        self.inbuf = np.empty(max(SIZES.values()) * 4, dtype=np.uint8)

    def echo(self, x: int) -> int:
        self.sock.sendall(struct.pack("<BQ", 0, x))
        _recv_exact(self.sock, memoryview(self.small))
        return struct.unpack("<Q", self.small)[0]

    def nbytes(self, x: np.ndarray) -> int:
        _send_all(self.sock, memoryview(struct.pack("<BQ", 1, x.nbytes)), memoryview(x))
        _recv_exact(self.sock, memoryview(self.small))
        return struct.unpack("<Q", self.small)[0]

    def make_array(self, n: int) -> np.ndarray:
        self.sock.sendall(struct.pack("<BQ", 2, n * 4))
        view = memoryview(self.inbuf)[: n * 4]
        _recv_exact(self.sock, view)
        return self.inbuf[: n * 4].view(np.float32)


def start_server(kind: str, env: dict) -> tuple[subprocess.Popen, str]:
    if kind in ("ours", "encrypted"):
        cmd = [
            sys.executable,
            str(REPO / "rpc.py"),
            "-q",
            "serve-echo",
            *(["--no-encryption"] if kind == "ours" else []),
        ]
    else:
        cmd = [sys.executable, __file__, "--serve", kind]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    address = proc.stdout.readline().strip()
    if not address:
        raise RuntimeError(f"{kind} server did not start")
    return proc, address


def measure(
    client_call: Callable, n_small: int, reps: dict[str, int], sizes: dict[str, int]
) -> dict[str, float]:
    res: dict[str, float] = {}
    for _ in range(50):
        client_call("echo", 1)
    lat = []
    for i in range(n_small):
        t = time.perf_counter()
        client_call("echo", i)
        lat.append(time.perf_counter() - t)
    res["small median us"] = float(np.median(lat) * 1e6)
    res["small p99 us"] = float(np.percentile(lat, 99) * 1e6)
    for label, n in sizes.items():
        x = np.random.default_rng(0).random(n, dtype=np.float32)
        assert client_call("nbytes", x) == x.nbytes
        assert client_call("make_array", n).shape == (n,)
        up, down = [], []
        for _ in range(reps[label]):
            t = time.perf_counter()
            client_call("nbytes", x)
            up.append(time.perf_counter() - t)
            t = time.perf_counter()
            client_call("make_array", n)
            down.append(time.perf_counter() - t)
        res[f"{label} client->server MB/s"] = x.nbytes / 1e6 / float(np.median(up))
        res[f"{label} server->client MB/s"] = x.nbytes / 1e6 / float(np.median(down))
    return res


def memcpy_mb_s(sizes: dict[str, int], reps: int) -> dict[str, float]:
    """memcpy bandwidth (numpy copyto between two preallocated arrays), MB/s per size:
    loopback TCP copies every byte at least twice (user -> kernel -> user)."""
    out = {}
    for label, n in sizes.items():
        a = np.random.default_rng(0).random(n, dtype=np.float32)
        b = np.empty_like(a)
        np.copyto(b, a)
        ts = []
        for _ in range(max(reps, 3)):
            t = time.perf_counter()
            np.copyto(b, a)
            ts.append(time.perf_counter() - t)
        out[f"{label} memcpy MB/s"] = a.nbytes / 1e6 / float(np.median(ts))
    return out


LABELS = {
    "ours": "this RPC (authenticated, --no-encryption)",
    "encrypted": "this RPC, encrypted (default, AES-256-GCM records)",
    "faiss": "faiss.contrib.rpc (as shipped, allowlist widened)",
    "raw": "loopback limit (one sendmsg, recv_into MSG_WAITALL)",
}


def run(mode: str, rounds: int, json_path: str | None) -> None:
    import benchlib as bl

    from distributed_ondisk.rpc import Client, generate_secret, wait_ready

    tiny, quick = mode == "smoke", mode == "quick"
    sizes = TINY_SIZES if tiny else SIZES
    n_small = 100 if tiny else 300 if quick else 2000
    small_reps, big_reps = (3, 2) if tiny else (10, 2) if quick else (50, 5)
    reps = dict(zip(sizes, (small_reps, big_reps)))
    secret = generate_secret()
    env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET=secret.decode())
    # One source of the secret only, and encryption as each row asks, whatever is exported.
    for name in ("DISTRIBUTED_ONDISK_SECRET_FILE", "DISTRIBUTED_ONDISK_RPC_PLAINTEXT"):
        env.pop(name, None)
    os.environ.pop("DISTRIBUTED_ONDISK_RPC_PLAINTEXT", None)
    res = bl.result("rpc", mode, {"sizes": sizes, "n_small": n_small, "reps": reps,
                                  "rounds": rounds})  # fmt: skip
    procs, calls, closers = [], {}, []
    try:
        # every server up for the whole run, so that the rounds can interleave them
        for kind in KINDS:
            proc, address = start_server(kind, env)
            procs.append(proc)
            if kind in ("ours", "encrypted"):
                encrypt = kind == "encrypted"
                wait_ready(address, secret=secret, timeout=30, encrypt=encrypt)
                client = Client(address, secret=secret, encrypt=encrypt)
                calls[kind], closers = client.call, closers + [client.close]
            elif kind == "faiss":
                import faiss.contrib.rpc as frpc

                _widen_faiss_allowlist()
                host, port = address.rsplit(":", 1)
                fc = frpc.Client(host, int(port))
                calls[kind] = lambda m, *a, fc=fc: getattr(fc, m)(*a)
                closers.append(fc.sock.close)
            else:
                rc = RawClient(address)
                calls[kind] = lambda m, *a, rc=rc: getattr(rc, m)(*a)
                closers.append(rc.sock.close)
        per_round = bl.interleave(
            {k: (lambda k=k: measure(calls[k], n_small, reps, sizes)) for k in KINDS}, rounds
        )
        mem = [memcpy_mb_s(sizes, big_reps) for _ in range(rounds)]
    finally:
        for close in closers:
            close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    summarize(res, per_round, mem, sizes)
    bl.emit(res, json_path)


def summarize(res: dict, per_round: dict, mem: list[dict], sizes: dict[str, int]) -> None:
    import benchlib as bl

    metrics = list(per_round["ours"][0])
    stats = {k: {m: bl.summary([r[m] for r in per_round[k]]) for m in metrics} for k in KINDS}
    memcpy = {m: bl.summary([r[m] for r in mem]) for m in mem[0]}
    for k in KINDS:
        res["rows" if k != "raw" else "bounds"].append(
            {"name": LABELS[k], "kind": k, "metrics": stats[k]}
        )
    res["bounds"].append({"name": "memcpy (numpy copyto)", "kind": "memcpy", "metrics": memcpy})
    med = {k: {m: v["median"] for m, v in stats[k].items()} for k in KINDS}
    rows = []
    for m in metrics:
        lower_better = "us" in m
        mc = (
            memcpy.get(f"{m.split(' ')[0]} {m.split(' ')[1]} memcpy MB/s")
            if not lower_better
            else None
        )
        cells = [m] + [bl.fmt_spread(stats[k][m], 0) for k in KINDS]
        cells.append(bl.fmt_spread(mc, 0) if mc else "—")
        for k in ("ours", "encrypted", "faiss"):
            f = med["raw"][m] / med[k][m] if lower_better else med[k][m] / med["raw"][m]
            cells.append(bl.fmt(f, 2))
        cells.append(
            bl.fmt(med["faiss"][m] / med["ours"][m] if lower_better else med["ours"][m]
                   / med["faiss"][m], 2)
        )  # fmt: skip
        rows.append(cells)
    for k in ("ours", "encrypted", "faiss"):
        for m in metrics:
            v = med["raw"][m] / med[k][m] if "us" in m else med[k][m] / med["raw"][m]
            bl.ratio(res, f"{k} {m} / loopback limit", v, "fraction of the bound (<= 1)")
    big = list(sizes)[-1]
    for d in ("client->server", "server->client"):
        m = f"{big} {d} MB/s"
        bl.ratio(res, f"ours {m} / faiss.contrib.rpc", med["ours"][m] / med["faiss"][m], "speed-up")
    res["tables"].append(
        bl.table(
            "RPC on loopback, median (min–max) over the rounds",
            [
                "metric",
                "this RPC",
                "encrypted",
                "faiss.contrib.rpc",
                "loopback limit",
                "memcpy",
                "RPC / limit",
                "encrypted / limit",
                "faiss / limit",
                "RPC / faiss",
            ],
            rows,
        )
    )
    res["notes"] += [
        (
            "Every server runs in its own process, all of them up for the whole run; each round "
            "measures every contender once, the order rotating; a round's figure is the median of "
            "its repetitions, the table gives the median and range of the rounds' figures."
        ),
        (
            "'/ limit' is the fraction of the loopback limit: throughput over the limit's, or for "
            "latency the limit's latency over the contender's (1 = as fast as the bare socket)."
        ),
        (
            "Loopback copies each byte user->kernel->user, so the limit stays below memcpy "
            "bandwidth; encryption (AES-GCM, GIL released) runs in parallel with the copies."
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--smoke", "--tiny", dest="smoke", action="store_true",
        help="1 KB / 100 KB arrays, few repetitions: a smoke run",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (smoke: 1)")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--serve", choices=["faiss", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "faiss":
        serve_faiss()
    elif args.serve == "raw":
        serve_raw()
    else:
        mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        run(mode, args.rounds or (1 if args.smoke else 3), args.json)


if __name__ == "__main__":
    main()
