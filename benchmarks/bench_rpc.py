#!/usr/bin/env python3
"""RPC on loopback: this toolkit's RPC vs faiss.contrib.rpc vs a raw socket.

One run prints one table: small-call round trip (median, p99) and throughput of
float32 arrays of 1 MB and 100 MB in both directions (argument client->server,
result server->client).  Each server runs in its own process.

    python benchmarks/bench_rpc.py [--quick]

faiss.contrib.rpc as shipped cannot unpickle arrays under numpy 2 (its allowlist
lacks ``numpy._core``); this benchmark widens that allowlist in both its processes.
It is otherwise used as shipped (no TCP_NODELAY).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"1 MB": 250_000, "100 MB": 25_000_000}  # float32 element counts


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

    class Handler(frpc.Server):
        def __init__(self, sock):
            super().__init__(sock, logf=open(os.devnull, "w"))
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
    pos = 0
    while pos < len(view):
        n = sock.recv_into(view[pos:])
        if not n:
            raise ConnectionError("closed")
        pos += n


def serve_raw() -> None:
    """Protocol: 9-byte request (op, n).  op 0: echo n; op 1: receive n bytes, reply 8;
    op 2: send n bytes."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"127.0.0.1:{listener.getsockname()[1]}", flush=True)
    req = bytearray(9)
    out = np.arange(max(SIZES.values()), dtype=np.float32).view(np.uint8)
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
        self.sock.sendall(struct.pack("<BQ", 1, x.nbytes))
        self.sock.sendall(memoryview(x).cast("B"))
        _recv_exact(self.sock, memoryview(self.small))
        return struct.unpack("<Q", self.small)[0]

    def make_array(self, n: int) -> np.ndarray:
        self.sock.sendall(struct.pack("<BQ", 2, n * 4))
        view = memoryview(self.inbuf)[:n * 4]
        _recv_exact(self.sock, view)
        return self.inbuf[:n * 4].view(np.float32)


def start_server(kind: str, env: dict) -> tuple[subprocess.Popen, str]:
    if kind == "ours":
        cmd = [sys.executable, str(REPO / "rpc.py"), "-q", "serve-echo"]
    else:
        cmd = [sys.executable, __file__, "--serve", kind]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    address = proc.stdout.readline().strip()
    if not address:
        raise RuntimeError(f"{kind} server did not start")
    return proc, address


def measure(client_call: Callable, n_small: int, reps: dict[str, int]) -> dict[str, float]:
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
    for label, n in SIZES.items():
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


def run(quick: bool) -> None:
    from distributed_ondisk.rpc import Client, generate_secret

    n_small = 300 if quick else 2000
    reps = {"1 MB": 10, "100 MB": 2} if quick else {"1 MB": 50, "100 MB": 7}
    secret = generate_secret()
    env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET=secret.decode())
    results = {}
    for kind in ("ours", "faiss", "raw"):
        proc, address = start_server(kind, env)
        try:
            if kind == "ours":
                from distributed_ondisk.rpc import wait_ready

                wait_ready(address, secret=secret, timeout=30)
                client = Client(address, secret=secret)
                results[kind] = measure(client.call, n_small, reps)
                client.close()
            elif kind == "faiss":
                import faiss.contrib.rpc as frpc

                _widen_faiss_allowlist()
                host, port = address.rsplit(":", 1)
                fc = frpc.Client(host, int(port))
                results[kind] = measure(lambda m, *a: getattr(fc, m)(*a), n_small, reps)
                fc.sock.close()
            else:
                rc = RawClient(address)
                results[kind] = measure(lambda m, *a: getattr(rc, m)(*a), n_small, reps)
                rc.sock.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print_table(results, quick)


def print_table(results: dict[str, dict[str, float]], quick: bool) -> None:
    import faiss

    print(f"# RPC on loopback{' (--quick)' if quick else ''}: {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}, faiss {faiss.__version__}, load avg "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| {'metric':<28} | {'this rpc':>10} | {'faiss.contrib.rpc':>17} | {'raw socket':>10} "
          f"| {'rpc/raw':>7} | {'rpc/faiss':>9} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 19}|{'-' * 12}|{'-' * 9}|{'-' * 11}|")
    for metric in results["ours"]:
        o, f, r = (results[k][metric] for k in ("ours", "faiss", "raw"))
        if "us" in metric:  # lower is better: ratios as speed-ups
            ratio_raw, ratio_f = r / o, f / o
        else:
            ratio_raw, ratio_f = o / r, o / f
        print(f"| {metric:<28} | {o:>10.1f} | {f:>17.1f} | {r:>10.1f} | {ratio_raw:>7.2f} "
              f"| {ratio_f:>9.2f} |")
    print("ratios > 1 mean this rpc is better (higher throughput or lower latency)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--serve", choices=["faiss", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "faiss":
        serve_faiss()
    elif args.serve == "raw":
        serve_raw()
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
