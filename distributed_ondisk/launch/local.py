"""The local backend: tasks as processes on this machine, and the servers a stage needs.

``LocalBackend.submit`` runs every copy of a task, at most ``max_parallel`` at once (like
``xargs -P``: a failed copy does not stop the others), and returns when all have ended.
:class:`ServerGroup` starts server processes (k-means, search), waits until each has
written its address and answers ``ping`` (never a fixed sleep), and stops every one it
started when the block ends, however it ends: an error, Ctrl-C, or SIGTERM/SIGHUP,
which :func:`exit_on_signals` turns into an exit that runs the ``finally`` blocks (the
bash launcher's ``trap stop_servers EXIT``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from distributed_ondisk.errors import ClusterError
from distributed_ondisk.launch.backend import TASK_CPUS_ENV, TASK_ID_ENV, TASK_INDEX, Job, Task

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0
_ids = itertools.count(1)


def exit_on_signals(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Make these signals raise SystemExit(128 + signum), so cleanup code runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for s in signums:
        signal.signal(s, handler)


def _open_log(path: Path | None) -> IO[bytes] | None:
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live process, then wait for each (SIGKILL after STOP_TIMEOUT_S)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    for p in procs:
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: killing it", p.pid, STOP_TIMEOUT_S)
            p.kill()
            p.wait()


class LocalBackend:
    """Processes on this machine; ``env`` is the environment every task starts from."""

    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None, max_parallel: int = 1) -> None:
        self.env = dict(os.environ if env is None else env)
        self.max_parallel = max(1, max_parallel)

    def task_env(self, task: Task, index: int | None) -> dict[str, str]:
        env = dict(self.env, **task.env)
        env[TASK_CPUS_ENV] = str(task.cpus)
        if index is not None:
            env[TASK_ID_ENV] = str(index)
        return env

    def _start(self, task: Task, index: int | None) -> subprocess.Popen[bytes]:
        logfile = None
        if task.log is not None:
            logfile = Path(
                str(task.log).replace(TASK_INDEX, str(index if index is not None else 0))
            )
        fh = _open_log(logfile)
        try:
            return subprocess.Popen(
                task.argv_for(index), env=self.task_env(task, index), stdout=fh, stderr=fh
            )
        finally:
            if fh is not None:
                fh.close()  # the child holds its own descriptor

    def submit(self, task: Task) -> Job:
        """Run every copy to its end; the Job holds each copy's exit status."""
        indices = list(task.indices)
        par = min(len(indices), task.max_parallel or self.max_parallel)
        codes: dict[int, int] = {}
        done: queue.Queue[tuple[int, int]] = queue.Queue()
        running: dict[int, subprocess.Popen[bytes]] = {}
        pending = list(enumerate(indices))

        def reap(slot: int, proc: subprocess.Popen[bytes]) -> None:
            done.put((slot, proc.wait()))

        try:
            while pending or running:
                while pending and len(running) < par:
                    slot, index = pending.pop(0)
                    running[slot] = self._start(task, index)
                    threading.Thread(target=reap, args=(slot, running[slot]), daemon=True).start()
                with contextlib.suppress(queue.Empty):  # the timeout keeps signals prompt
                    slot, rc = done.get(timeout=1.0)
                    codes[slot] = rc
                    del running[slot]
        finally:
            _stop(list(running.values()))  # only on an exception: else nothing runs
        return Job(f"local-{next(_ids)}", task, [codes[s] for s in range(len(indices))])

    def wait(self, job: Job) -> Job:
        return job.check()

    def run(self, task: Task) -> Job:
        """submit, then TaskFailed if any copy failed."""
        return self.wait(self.submit(task))


@dataclass
class Server:
    """A started server process and the file it writes its address to once it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    log: Path | None
    address: str = ""


class ServerGroup:
    """Servers of one stage: started, awaited (address file, then ping), stopped on exit."""

    def __init__(
        self, env: Mapping[str, str], secret_file: str | os.PathLike[str] | None, timeout_s: float
    ) -> None:
        self.env = dict(env)
        self.secret_file = secret_file
        self.timeout_s = timeout_s
        self.servers: list[Server] = []

    def start(self, name: str, argv: Sequence[str], ready_file: Path, log_path: Path) -> Server:
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()
        fh = _open_log(log_path)
        try:
            proc = subprocess.Popen(list(argv), env=self.env, stdout=fh, stderr=fh)
        finally:
            if fh is not None:
                fh.close()
        server = Server(name, proc, ready_file, log_path)
        self.servers.append(server)
        return server

    def await_ready(self, server: Server) -> str:
        """Wait until ``server`` has written its address and answers ping; its address."""
        from distributed_ondisk.rpc import load_secret, wait_ready

        t_end = time.monotonic() + self.timeout_s
        where = f"see its log {server.log}" if server.log else "see its output"
        while not (server.ready_file.exists() and server.ready_file.read_text().strip()):
            if server.proc.poll() is not None:
                raise ClusterError(
                    f"{server.name} (pid {server.proc.pid}) exited {server.proc.returncode} "
                    f"before listening; {where}"
                )
            if time.monotonic() > t_end:
                raise ClusterError(
                    f"{server.name} (pid {server.proc.pid}) not listening after "
                    f"{self.timeout_s:g} s; {where}"
                )
            time.sleep(0.05)  # polling for the file (then ping), not a fixed wait
        server.address = server.ready_file.read_text().strip()
        secret = load_secret(self.secret_file) if self.secret_file else load_secret()
        wait_ready(server.address, secret=secret, timeout=max(1.0, t_end - time.monotonic()))
        return server.address

    def await_all(self) -> list[str]:
        return [self.await_ready(s) for s in self.servers]

    def stop(self) -> None:
        _stop([s.proc for s in self.servers])
        self.servers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
