"""The Slurm backend: a :class:`~distributed_ondisk.launch.backend.Task` as an sbatch job script.

:func:`batch_script` is pure (tested as text, without a cluster): ``#SBATCH`` lines for
the job's name, time, partition, log, tasks, CPUs, GPUs, array range (``0-N%MAX``) and
``--dependency=afterok:ID:ID``; then the exported variables, ``TASK_ID`` and ``NT_TASK``
from Slurm's own, and the command (``srun`` before it for a multi-task step).
:class:`SlurmBackend` writes that script into ``WORKDIR/slurm/`` (kept: what ran is
there to read) and submits it with ``sbatch --parsable``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distributed_ondisk.errors import ClusterError
from distributed_ondisk.launch.backend import TASK_CPUS_ENV, TASK_ID_ENV, TASK_INDEX, Job, Task

FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


@dataclass(frozen=True)
class SlurmOptions:
    """What every job of one launch shares."""

    chdir: Path
    log_dir: Path  # each job's log: log_dir/<name>_<job>_<array task>.log
    time: str = "4:00:00"
    partition: str = ""
    exports: Mapping[str, str] = field(default_factory=dict)  # set in every job script


def sbatch_options(task: Task, opts: SlurmOptions) -> list[str]:
    """The job's sbatch options, ``--name=value`` each, in a fixed order."""
    o = [
        f"--job-name={task.name}",
        f"--chdir={opts.chdir}",
        f"--time={opts.time}",
        f"--output={opts.log_dir}/%x_%A_%a.log",
        "--export=ALL",
    ]
    if opts.partition:
        o.append(f"--partition={opts.partition}")
    if task.nodes is not None:
        o.append(f"--nodes={task.nodes}")
    if task.ntasks_per_node is not None:
        o.append(f"--ntasks-per-node={task.ntasks_per_node}")
    else:
        o.append(f"--ntasks={task.ntasks}")
    o.append(f"--cpus-per-task={task.cpus}")
    if task.gpus_per_node > 0:
        o.append(f"--gres=gpu:{task.gpus_per_node}")
    if task.array is not None:
        limit = f"%{task.max_parallel}" if task.max_parallel > 0 else ""
        o.append(f"--array=0-{task.array - 1}{limit}")
    if task.after:
        o.append("--dependency=afterok:" + ":".join(task.after))
    return o


def command_line(task: Task) -> str:
    """The shell command of the job: argv quoted, the array index from Slurm's variable."""
    words = [f'"${TASK_ID_ENV}"' if a == TASK_INDEX else shlex.quote(a) for a in task.argv]
    return ("srun " if task.step else "") + " ".join(words)


def batch_script(task: Task, opts: SlurmOptions) -> str:
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {o}" for o in sbatch_options(task, opts)]
    lines.append("set -euo pipefail")
    env = dict(opts.exports, **task.env)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    if task.array is not None:
        lines.append(f'export {TASK_ID_ENV}="$SLURM_ARRAY_TASK_ID"')
    lines.append(f'export {TASK_CPUS_ENV}="${{SLURM_CPUS_PER_TASK:-1}}"')
    lines.append(f"exec {command_line(task)}")
    return "\n".join(lines) + "\n"


def parse_job_id(out: str) -> str:
    """``sbatch --parsable`` prints ``id`` or ``id;cluster``."""
    job = out.strip().split(";")[0]
    if not job.isdigit():
        raise ClusterError(f"sbatch printed {out!r}, not a job id")
    return job


class SlurmBackend:
    """Submits with sbatch; ``env`` is the environment sbatch runs in (SLURM_CONF...)."""

    name = "slurm"

    def __init__(self, opts: SlurmOptions, env: Mapping[str, str] | None = None) -> None:
        self.opts = opts
        self.env = dict(os.environ if env is None else env)

    def _run(self, args: list[str], timeout_s: float = 120.0) -> str:
        try:
            proc = subprocess.run(
                args, env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except FileNotFoundError as e:
            raise ClusterError(f"{args[0]} not found: is this a Slurm login node?") from e
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{' '.join(args)!r} did not finish in {timeout_s:g} s") from e
        if proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)!r} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        return proc.stdout

    def submit(self, task: Task) -> Job:
        self.opts.log_dir.mkdir(parents=True, exist_ok=True)
        script = self.opts.log_dir / f"{task.name}.sbatch"
        tmp = script.with_name(f".{script.name}.{os.getpid()}.tmp")
        tmp.write_text(batch_script(task, self.opts))
        os.replace(tmp, script)  # sbatch copies the script: rewriting it later is harmless
        return Job(parse_job_id(self._run(["sbatch", "--parsable", str(script)])), task)

    def states(self, job: Job) -> list[str]:
        """JobState of each of the job's tasks (one per array task)."""
        out = self._run(["scontrol", "show", "job", "-o", job.id])
        return [
            f.split("=", 1)[1]
            for line in out.splitlines()
            for f in line.split()
            if f.startswith("JobState=")
        ]

    def wait(self, job: Job, timeout_s: float | None = None, poll_s: float = 1.0) -> Job:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            states = self.states(job)
            if states and all(s in FINAL_STATES for s in states):
                job.returncodes = [0 if s == "COMPLETED" else 1 for s in states]
                return job.check()
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"job {job.id} not finished after {timeout_s:g} s ({states})")
            time.sleep(poll_s)  # polling the scheduler: there is nothing to wait on
