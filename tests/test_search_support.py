"""Support for the search tests (no tests here): a small real build through the build
library, and search server processes on 127.0.0.1, port 0, waited for by ping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from build_helpers import REPO, build_all, clustered, make_workdir  # noqa: F401

from distributed_ondisk.rpc import wait_ready


def build_shards(
    root: Path, nh: Sequence[int] = (3,), n: int = 20000, d: int = 32, k: int = 64, seed: int = 0
):
    """Work dir with the trained index, 2 vslices and, for each m in ``nh``, m hslices."""
    wd, x = make_workdir(root, n=n, d=d, k=k, seed=seed)
    for m in nh:
        build_all(wd, 2, m)
    return wd, x


class ServerProcess:
    """``search_server.py`` in a subprocess; ``address`` once it answers ping."""

    def __init__(
        self, shards: Sequence[Path], secret_file: Path | None, extra_env: dict | None = None
    ) -> None:
        args = [sys.executable, str(REPO / "search_server.py"), "--shards", *map(str, shards), "-q"]
        args += ["--secret-file", str(secret_file)] if secret_file else ["--insecure"]
        env = dict(os.environ, OMP_NUM_THREADS="1", **(extra_env or {}))
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/"
        )
        self.address = ""
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.wait(30)
            raise RuntimeError(f"search server did not start: {line!r} {''.join(self._stderr)}")
        self.address = line.split()[-1]

    def wait(self, secret: bytes | None) -> ServerProcess:
        wait_ready(self.address, secret=secret, timeout=60)
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
