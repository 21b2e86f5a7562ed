"""Start k-means servers as local subprocesses (``--test 3``, tests, benchmark).

Each server serves one contiguous slice of a vector file on 127.0.0.1, port 0;
readiness = its ``--when_ready`` file appears and it answers ``ping``.  The
servers are always stopped at exit (SIGTERM, then SIGKILL), even on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from distributed_ondisk.errors import RPCTimeout
from distributed_ondisk.ranges import split_range
from distributed_ondisk.rpc import generate_secret, load_secret, wait_ready, write_secret_file


def slice_bounds(n: int, nservers: int) -> list[tuple[int, int]]:
    """Rows ``[i0, i1)`` of each server: the project's one split (:func:`split_range`)."""
    return [split_range(n, nservers, i) for i in range(nservers)]


class LocalServers:
    """``with LocalServers(path, n, nservers) as s: s.addresses, s.secret``."""

    def __init__(
        self,
        indata: str,
        n: int,
        nservers: int,
        *,
        nthreads: int | None = 1,
        gpu: int | None = -2,
        secret_file: str | None = None,
        insecure: bool = False,
        start_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.indata, self.n, self.nservers = str(indata), n, nservers
        self.nthreads, self.gpu = nthreads, gpu
        self.insecure = insecure
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self._tmp = tempfile.TemporaryDirectory(prefix="kmeans-servers-")
        self.dir = Path(self._tmp.name)
        if insecure:
            self.secret_file, self.secret = None, None
        elif secret_file:
            self.secret_file, self.secret = secret_file, load_secret(secret_file)
        else:
            self.secret_file = str(self.dir / "secret")
            self.secret = write_secret_file(self.secret_file, generate_secret())
        self.procs: list[subprocess.Popen] = []
        self.addresses: list[str] = []

    def _command(self, i: int, i0: int, i1: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "distributed_ondisk.kmeans.cli",
            "--server",
            "--indata",
            self.indata,
            "--i0",
            str(i0),
            "--i1",
            str(i1),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--when_ready",
            str(self.dir / f"ready.{i}"),
        ]
        if self.nthreads:
            cmd += ["--nt", str(self.nthreads)]
        if self.gpu is not None:
            cmd += ["--gpu", str(self.gpu)]
        cmd += ["--insecure"] if self.insecure else ["--secret-file", str(self.secret_file)]
        return cmd + self.extra_args

    def log_tail(self, i: int, nbytes: int = 2000) -> str:
        try:
            return (self.dir / f"server.{i}.log").read_text(errors="replace")[-nbytes:]
        except OSError:
            return ""

    def start(self) -> LocalServers:
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        for i, (i0, i1) in enumerate(slice_bounds(self.n, self.nservers)):
            with open(self.dir / f"server.{i}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        self._command(i, i0, i1), stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                )
        deadline = time.monotonic() + self.start_timeout
        for i, proc in enumerate(self.procs):
            ready = self.dir / f"ready.{i}"
            while not ready.exists():
                if proc.poll() is not None:
                    raise RPCTimeout(
                        f"local k-means server {i} exited with status "
                        f"{proc.returncode} before listening:\n{self.log_tail(i)}"
                    )
                if time.monotonic() > deadline:
                    raise RPCTimeout(
                        f"local k-means server {i} not listening after "
                        f"{self.start_timeout} s:\n{self.log_tail(i)}"
                    )
                time.sleep(0.02)
            address = ready.read_text().strip()
            wait_ready(address, secret=self.secret, timeout=max(deadline - time.monotonic(), 0.1))
            self.addresses.append(address)
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        self._tmp.cleanup()

    # typing.Self needs Python 3.11 (we support 3.10) and typing_extensions is no
    # dependency; the class is not meant to be subclassed
    def __enter__(self) -> LocalServers:  # noqa: PYI034
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
