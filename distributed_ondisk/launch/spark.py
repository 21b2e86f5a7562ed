"""The Spark backend: each copy of a :class:`~distributed_ondisk.launch.backend.Task` is one
Spark task, run by an executor as a process (its command line, as on any backend).

It rides on :class:`distributed_ondisk.autobuild.pyspark.SparkRunner` (what
``build_index(distributed="pyspark")`` uses): the active session or one from the
defaults, one partition per copy, results in copy order, the task's own error raised on
the driver.  Executors run with their own environment plus the task's variables
(``env`` here, e.g. the pipeline settings), ``TASK_ID`` and ``NT_TASK``; paths must be on
storage every executor sees, as for Slurm.  A copy's exit status comes back, so a
failure is named like a local one.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distributed_ondisk.launch.backend import TASK_CPUS_ENV, TASK_ID_ENV, TASK_INDEX, Job, Task

_ids = itertools.count(1)


def run_copy(item: tuple[list[str], dict[str, str], str | None]) -> int:
    """One copy, on an executor (module level: Spark pickles it by name)."""
    argv, extra_env, log = item
    env = dict(os.environ, **extra_env)
    if log is None:
        return subprocess.run(argv, env=env, check=False).returncode
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.run(argv, env=env, stdout=fh, stderr=fh, check=False).returncode


class SparkBackend:
    """Copies as Spark tasks; ``env`` is added to every executor's environment."""

    name = "spark"

    def __init__(self, session: Any | None = None, env: Mapping[str, str] | None = None) -> None:
        from distributed_ondisk.autobuild.pyspark import SparkRunner

        self.runner = SparkRunner(session)
        self.env = dict(env or {})

    def items(self, task: Task) -> list[tuple[list[str], dict[str, str], str | None]]:
        out = []
        for index in task.indices:
            env = dict(self.env, **task.env)
            env[TASK_CPUS_ENV] = str(task.cpus)
            if index is not None:
                env[TASK_ID_ENV] = str(index)
            i = str(index if index is not None else 0)
            log = str(task.log).replace(TASK_INDEX, i) if task.log is not None else None
            out.append((task.argv_for(index), env, log))
        return out

    def submit(self, task: Task) -> Job:
        """Run every copy (Spark schedules them on its executors); returns when all ended."""
        codes = self.runner.map(run_copy, self.items(task), desc=f"task {task.name}")
        return Job(f"spark-{next(_ids)}", task, [int(c) for c in codes])

    def wait(self, job: Job) -> Job:
        return job.check()

    def run(self, task: Task) -> Job:
        return self.wait(self.submit(task))
