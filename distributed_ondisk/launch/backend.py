"""The one small interface every launcher backend implements (local processes, Slurm, Spark).

A :class:`Task` says *what* to run, never *how*: the command line, the environment it
adds, the CPUs of each copy, where its output goes, how many copies of an array, and
which earlier jobs must have succeeded.  A backend's ``submit(task)`` starts it and
returns a :class:`Job`; ``wait(job)`` blocks until it has ended and raises
:class:`TaskFailed` when any copy failed.  The local and Spark backends run a task to
its end inside ``submit``; Slurm's queues it (``sbatch``) and its jobs chain by
``--dependency=afterok``.

Array copies tell themselves apart by their index: each copy's environment has
``TASK_ID`` (on Slurm, the job script sets it from ``SLURM_ARRAY_TASK_ID``), and an
argument equal to :data:`TASK_INDEX` is replaced by it, so one task description is run
unchanged by every backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from distributed_ondisk.errors import DistributedOndiskError, InputError

TASK_INDEX = "{task_id}"
TASK_ID_ENV = "TASK_ID"
# Threads a task may use: its CPUs (the stages' --nt reads it, as the bash NT_TASK did).
TASK_CPUS_ENV = "NT_TASK"
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class TaskFailed(DistributedOndiskError):
    """A task (or some copies of an array task) exited non-zero; its own error is in its log."""


@dataclass(frozen=True)
class Task:
    """One command to run, once or as an array of ``array`` copies."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: int = 1  # per copy (and per srun task)
    array: int | None = None  # None: one copy; n: copies 0 .. n-1
    max_parallel: int = 0  # array copies at once (0: the backend's limit)
    log: Path | None = None  # None: the backend's default (local: inherited stderr)
    after: tuple[str, ...] = ()  # ids of jobs that must have succeeded first
    # Multi-process jobs (Slurm): tasks of one srun step, and their placement.
    ntasks: int = 1
    nodes: int | None = None
    ntasks_per_node: int | None = None
    gpus_per_node: int = 0
    step: bool = False  # run argv through srun, once per task of the job

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"task name {self.name!r}: letters, digits and _ only")
        if not self.argv:
            raise InputError(f"task {self.name}: empty command line")
        if self.array is not None and self.array < 1:
            raise InputError(f"task {self.name}: array of {self.array} copies, need >= 1")
        if self.cpus < 1 or self.ntasks < 1:
            raise InputError(f"task {self.name}: cpus and ntasks must be >= 1")

    def argv_for(self, index: int | None) -> list[str]:
        """The command line of copy ``index`` (``TASK_INDEX`` arguments replaced)."""
        if index is None:
            return list(self.argv)
        return [str(index) if a == TASK_INDEX else a for a in self.argv]

    @property
    def indices(self) -> Sequence[int | None]:
        return [None] if self.array is None else range(self.array)


@dataclass
class Job:
    """A submitted task: its backend's id and, once known, the exit status of each copy."""

    id: str
    task: Task
    returncodes: list[int] | None = None  # None while it runs (or unknown: Slurm)

    @property
    def failed(self) -> list[int]:
        """The copies (array indices, 0 for a single task) that exited non-zero."""
        return [i for i, rc in enumerate(self.returncodes or []) if rc != 0]

    def check(self) -> Job:
        """This job, or TaskFailed naming the copies that failed and the log."""
        codes, bad = self.returncodes or [], self.failed
        if not bad:
            return self
        if self.task.array is None:
            what = f"exit {codes[0]}"
        else:
            what = "copies " + ", ".join(f"{i} (exit {codes[i]})" for i in bad)
        where = f"; log: {self.task.log}" if self.task.log else ""
        raise TaskFailed(f"task {self.task.name} failed: {what}{where}")


class Backend(Protocol):
    """What the pipeline needs of a backend."""

    name: str

    def submit(self, task: Task) -> Job: ...

    def wait(self, job: Job) -> Job: ...
