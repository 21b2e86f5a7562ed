#!/usr/bin/env python3
"""RPC on loopback: this toolkit's RPC (authenticated; plain and encrypted) vs
faiss.contrib.rpc vs a raw socket.

One run prints one table: small-call round trip (median, p99) and throughput of
float32 arrays of 1 MB and 100 MB in both directions (argument client->server,
result server->client).  Each server runs in its own process.  "this rpc" runs
with --no-encryption (authenticated only), "encrypted" with the default sealed
records (AES-256-GCM).

    python benchmarks/bench_rpc.py [--quick | --tiny]

The secret is passed to the servers as DISTRIBUTED_ONDISK_SECRET; any exported
DISTRIBUTED_ONDISK_SECRET_FILE is not passed on (a server refuses two sources).

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
        self.sock.sendall(struct.pack("<BQ", 1, x.nbytes))
        self.sock.sendall(memoryview(x).cast("B"))
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


def run(quick: bool, tiny: bool) -> None:
    from distributed_ondisk.rpc import Client, generate_secret, wait_ready

    sizes = TINY_SIZES if tiny else SIZES
    n_small = 100 if tiny else 300 if quick else 2000
    small_reps, big_reps = (3, 2) if tiny else (10, 2) if quick else (50, 7)
    reps = dict(zip(sizes, (small_reps, big_reps)))
    secret = generate_secret()
    env = dict(os.environ, DISTRIBUTED_ONDISK_SECRET=secret.decode())
    # One source of the secret only, and encryption as each row asks, whatever is exported.
    for name in ("DISTRIBUTED_ONDISK_SECRET_FILE", "DISTRIBUTED_ONDISK_RPC_PLAINTEXT"):
        env.pop(name, None)
    os.environ.pop("DISTRIBUTED_ONDISK_RPC_PLAINTEXT", None)
    results = {}
    for kind in KINDS:
        proc, address = start_server(kind, env)
        try:
            if kind in ("ours", "encrypted"):
                encrypt = kind == "encrypted"
                wait_ready(address, secret=secret, timeout=30, encrypt=encrypt)
                client = Client(address, secret=secret, encrypt=encrypt)
                results[kind] = measure(client.call, n_small, reps, sizes)
                client.close()
            elif kind == "faiss":
                import faiss.contrib.rpc as frpc

                _widen_faiss_allowlist()
                host, port = address.rsplit(":", 1)
                fc = frpc.Client(host, int(port))
                results[kind] = measure(lambda m, *a: getattr(fc, m)(*a), n_small, reps, sizes)
                fc.sock.close()
            else:
                rc = RawClient(address)
                results[kind] = measure(lambda m, *a: getattr(rc, m)(*a), n_small, reps, sizes)
                rc.sock.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print_table(results, " (--tiny)" if tiny else " (--quick)" if quick else "")


def print_table(results: dict[str, dict[str, float]], mode: str) -> None:
    import faiss

    print(
        f"# RPC on loopback{mode}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, faiss {faiss.__version__}, load avg "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"| {'metric':<28} | {'this rpc':>10} | {'encrypted':>10} | {'faiss.contrib.rpc':>17} "
        f"| {'raw socket':>10} | {'rpc/raw':>7} | {'enc/raw':>7} | {'rpc/faiss':>9} |"
    )
    print(
        f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 19}|{'-' * 12}|{'-' * 9}|{'-' * 9}"
        f"|{'-' * 11}|"
    )
    for metric in results["ours"]:
        o, e, f, r = (results[k][metric] for k in KINDS)
        if "us" in metric:  # lower is better: ratios as speed-ups
            ratio_raw, ratio_enc, ratio_f = r / o, r / e, f / o
        else:
            ratio_raw, ratio_enc, ratio_f = o / r, e / r, o / f
        print(
            f"| {metric:<28} | {o:>10.1f} | {e:>10.1f} | {f:>17.1f} | {r:>10.1f} "
            f"| {ratio_raw:>7.2f} | {ratio_enc:>7.2f} | {ratio_f:>9.2f} |"
        )
    print(
        "this rpc: authenticated, --no-encryption; encrypted: the default (AES-256-GCM "
        "records).  Ratios > 1 mean better than the other (throughput or latency)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--tiny", action="store_true", help="1 KB / 100 KB arrays, few repetitions: a smoke run"
    )
    parser.add_argument("--serve", choices=["faiss", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "faiss":
        serve_faiss()
    elif args.serve == "raw":
        serve_raw()
    else:
        run(args.quick, args.tiny)


if __name__ == "__main__":
    main()
