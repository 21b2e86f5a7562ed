"""`rpc.py serve-echo` as a real server process (for the RPC limit tests), and a
relay that sits between a client and a server as a man in the middle would."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from reliability_helpers import REPO, base_env

from distributed_ondisk.rpc import wait_ready, write_secret_file
from distributed_ondisk.rpc.auth import HELLO, PROOF_LEN


class EchoProc:
    def __init__(self, proc: subprocess.Popen, address: str, log: Path) -> None:
        self.proc, self.address, self.log = proc, address, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def echo_server(
    tmp: Path, *flags: str, secret: bytes | None = None
) -> Iterator[tuple[EchoProc, bytes]]:
    """A serve-echo process on 127.0.0.1:0 with ``flags``; yields it and its secret."""
    sf = tmp / "echo.secret"
    if not sf.exists():
        write_secret_file(sf, secret)
    from distributed_ondisk.rpc import load_secret

    secret = load_secret(sf)
    env = base_env(DISTRIBUTED_ONDISK_SECRET_FILE=str(sf))
    env.pop("DISTRIBUTED_ONDISK_SECRET", None)
    log = tmp / f"echo{len(list(tmp.glob('echo*.log')))}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "rpc.py"), "serve-echo", *flags],
            stdout=subprocess.PIPE,
            stderr=logf,
            env=env,
            text=True,
        )
    try:
        address = proc.stdout.readline().strip()
        assert address, f"serve-echo did not start: {log.read_text()[-2000:]}"
        wait_ready(
            address,
            secret=secret,
            timeout=60,
            encrypt=False if "--no-encryption" in flags else None,
        )
        yield EchoProc(proc, address, log), secret
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def rpc_ping(address: str, timeout: float, secret_file: Path) -> subprocess.CompletedProcess:
    env = base_env(DISTRIBUTED_ONDISK_SECRET_FILE=str(secret_file))
    env.pop("DISTRIBUTED_ONDISK_SECRET", None)
    return subprocess.run(
        [sys.executable, str(REPO / "rpc.py"), "-q", "ping", address, "--timeout", str(timeout)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


Tamper = Callable[[str, int, bytes], Sequence[bytes]]
"""(direction "c2s"/"s2c", record number, record bytes) -> the records to forward."""


class Relay:
    """Forwards one connection between a client and ``server``: the handshake verbatim
    (or through ``tamper_handshake``), then record by record through ``tamper``.
    ``seen`` keeps every byte that crossed it, both directions."""

    def __init__(
        self,
        server: str,
        tamper: Tamper | None,
        tamper_handshake: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        host, port = server.rsplit(":", 1)
        self.server = (host, int(port))
        self.tamper, self.tamper_handshake = tamper, tamper_handshake
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(30)
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.server, timeout=30)
        for s in (client, upstream):
            s.settimeout(30)
        t = threading.Thread(
            target=self._pipe,
            args=(upstream, client, "s2c", HELLO.size + 1 + PROOF_LEN),
            daemon=True,
        )
        t.start()
        self._pipe(client, upstream, "c2s", HELLO.size + PROOF_LEN)
        t.join(30)
        client.close()
        upstream.close()

    def _read(self, src: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = src.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        with self._lock:
            self.seen += buf
        return bytes(buf)

    def _pipe(
        self, src: socket.socket, dst: socket.socket, direction: str, handshake_len: int
    ) -> None:
        try:
            hs = self._read(src, HELLO.size)
            if self.tamper_handshake:
                hs = self.tamper_handshake(direction, hs)
            dst.sendall(hs)
            dst.sendall(self._read(src, handshake_len - HELLO.size))
            while self.tamper is None:  # a plain pass-through (the control case)
                chunk = src.recv(1 << 16)
                if not chunk:
                    return
                with self._lock:
                    self.seen += chunk
                dst.sendall(chunk)
            n = 0
            while True:
                head = self._read(src, 4)
                body = self._read(src, struct.unpack("<I", head)[0])
                for rec in self.tamper(direction, n, head + body):
                    dst.sendall(rec)
                n += 1
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        self._thread.join(60)
