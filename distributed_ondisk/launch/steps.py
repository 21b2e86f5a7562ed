"""What one task of the pipeline runs where it was placed: a Slurm job's body, or a
local array copy (``vslice N``, ``hslice N``: the stage process itself, by exec).

Server steps (``srun``, one server per task): task ``SLURM_PROCID`` of ``SLURM_NPROCS``
serves its share, writes ``host:port`` to
``WORKDIR/<kind>_servers/job_<JOBID>/<PROCID>.addr`` once it answers ping; for k-means,
task 0 also runs the client over every task's server, then writes ``done`` so the others
stop.  Search servers serve until the job ends (scancel or its time limit).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.errors import ClusterError, InputError
from distributed_ondisk.launch import commands
from distributed_ondisk.launch.backend import TASK_CPUS_ENV, TASK_ID_ENV
from distributed_ondisk.launch.local import Server, ServerGroup
from distributed_ondisk.launch.pipeline import Run, run_one, run_trained, timed, write_report

log = logging.getLogger("run_on_cluster")


def _step_env() -> tuple[int, int, str]:
    try:
        return (
            int(os.environ["SLURM_PROCID"]),
            int(os.environ["SLURM_NPROCS"]),
            os.environ["SLURM_JOB_ID"],
        )
    except KeyError as e:
        raise InputError(f"{e.args[0]} is not set: run this target through srun") from None


def task_index() -> int:
    """This array copy's index: TASK_ID (set by every backend), else Slurm's own."""
    raw = os.environ.get(TASK_ID_ENV) or os.environ.get("SLURM_ARRAY_TASK_ID")
    if raw is None:
        raise InputError(f"{TASK_ID_ENV} is not set: run this target as an array task")
    return int(raw)


def task_threads() -> int:
    return int(os.environ.get(TASK_CPUS_ENV) or os.environ.get("SLURM_CPUS_PER_TASK") or 1)


def _publish(server: Server, group: ServerGroup, addr_file: Path) -> str:
    """Wait for the server, then publish it under this node's name (the address it
    wrote says 0.0.0.0)."""
    port = group.await_ready(server).rsplit(":", 1)[1]
    address = f"{socket.gethostname()}:{port}"
    atomic_write_text(addr_file, address + "\n")
    return address


def within_kmeans_server(run: Run) -> None:
    proc_id, nprocs, job = _step_env()
    db, n_db = run.data()
    d = run.wd.servers_dir("kmeans", f"job_{job}")
    d.mkdir(parents=True, exist_ok=True)
    with run.servers() as group:
        argv = commands.kmeans_server(
            run.s, db, n_db, proc_id, nprocs, "0.0.0.0", d / f"{proc_id}.local", task_threads()
        )
        server = group.start(
            f"k-means server task {proc_id}", argv, d / f"{proc_id}.local", d / f"{proc_id}.log"
        )
        _publish(server, group, d / f"{proc_id}.addr")
        if proc_id != 0:
            while not (d / "done").exists():  # serve until the client is finished
                if server.proc.poll() is not None:
                    raise ClusterError(f"k-means server task {proc_id} died (log: {server.log})")
                time.sleep(1.0)
            return
        rc = 1
        try:  # whatever happens, the other tasks learn that the client has finished
            hosts = _job_hosts(run)
            log.info("k-means servers on: %s", " ".join(hosts))
            servers = [_await_address(run, d / f"{i}.addr", hosts) for i in range(nprocs)]
            with timed(run, "kmeans"):
                run_one(run, "kmeans", commands.kmeans_client(run.s, run.wd, servers, None))
            rc = 0
        finally:
            atomic_write_text(d / "done", f"{rc}\n")


def _job_hosts(run: Run) -> list[str]:
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist],
        check=False,
        env=run.env,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def _await_address(run: Run, addr_file: Path, hosts: list[str]) -> str:
    from distributed_ondisk.rpc import load_secret, wait_ready

    t_end = time.monotonic() + run.s.wait_timeout
    while not (addr_file.exists() and addr_file.read_text().strip()):
        if time.monotonic() > t_end:
            raise ClusterError(
                f"k-means server task {addr_file.stem} never published its address in {addr_file.parent}"
            )
        time.sleep(0.5)  # polling for the file, then ping
    addr = addr_file.read_text().strip()
    if addr.rsplit(":", 1)[0] not in hosts:
        log.warning("%s is not in the job's node list", addr)
    wait_ready(addr, secret=load_secret(run.s.secret_file), timeout=run.s.wait_timeout)
    return addr


def within_search_server(run: Run) -> None:
    proc_id, nprocs, job = _step_env()
    d = run.wd.servers_dir("search", f"job_{job}")
    d.mkdir(parents=True, exist_ok=True)
    with run.servers() as group:
        argv = commands.search_server(
            run.s, run.wd, proc_id, nprocs, "0.0.0.0", d / f"{proc_id}.local"
        )
        server = group.start(
            f"search server task {proc_id}", argv, d / f"{proc_id}.local", d / f"{proc_id}.log"
        )
        address = _publish(server, group, d / f"{proc_id}.addr")
        log.info("search server %d of %d serving on %s", proc_id, nprocs, address)
        rc = server.proc.wait()
        if rc != 0:
            raise ClusterError(f"search server task {proc_id} exited {rc} (log: {server.log})")


def trained_index(run: Run) -> None:
    with timed(run, "trained_index"):
        run_trained(run)


def vslice(run: Run, i: int | None = None, timing: bool = True) -> None:
    i = task_index() if i is None else i
    argv = commands.vslice(run.s, run.wd, *run.data(), i, task_threads())
    _maybe_timed(run, "vslices", str(i), argv, timing)


def hslice(run: Run, j: int | None = None, timing: bool = True) -> None:
    j = task_index() if j is None else j
    _maybe_timed(run, "hslices", str(j), commands.hslice(run.s, run.wd, j, task_threads()), timing)


def _maybe_timed(run: Run, stage: str, task: str, argv: list[str], timing: bool) -> None:
    if not timing:  # a local array copy: the whole stage is timed by its launcher
        os.execvpe(argv[0], argv, run.env)
    with timed(run, stage, task):
        run_one(run, stage, argv)


def search(run: Run) -> None:
    from distributed_ondisk.launch.pipeline import run_search_eval

    with timed(run, "search"):
        run_search_eval(run)
    write_report(run)
