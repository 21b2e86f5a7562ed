"""The single-node Slurm cluster (scripts/slurm_single_node.bash) runs real jobs:
srun tasks, sbatch --wait, an array job and an afterok dependency chain.

Skipped, with the reason, where the machine cannot run it (not root, no
slurm-wlm/munge; scripts/install_system_deps.bash installs them as root on
Debian/Ubuntu, and scripts/test.bash runs it first)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from distributed_ondisk.errors import ClusterError
from distributed_ondisk.launch import slurm_cluster
from distributed_ondisk.launch.slurm_cluster import (
    SlurmCluster,
    ensure_slurm_cluster,
    slurm_unavailable_reason,
)

JOB_TIMEOUT_S = 90.0


@pytest.fixture()
def jobdir(tmp_path: Path) -> Path:
    # Jobs run as root on this same machine, so the test's tmp_path is shared storage.
    return tmp_path


def _sbatch(cluster: SlurmCluster, jobdir: Path, *args: str) -> str:
    """Submit and return the job id (--parsable prints "id" or "id;cluster")."""
    out = cluster.run(
        ["sbatch", "--parsable", "-D", str(jobdir), "-o", str(jobdir / "slurm-%j.out"), *args],
        JOB_TIMEOUT_S,
        cwd=jobdir,
    )
    return out.stdout.strip().split(";")[0]


@pytest.mark.slurm
@pytest.mark.integration
def test_node_is_idle_with_all_cpus(cluster: SlurmCluster) -> None:
    out = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T %c %P"]).stdout.split()
    assert out == [cluster.node, "idle", str(cluster.cpus), f"{cluster.partition}*"]
    assert cluster.node == socket.gethostname().split(".")[0]
    assert cluster.cpus == len(os.sched_getaffinity(0)) or cluster.cpus == os.cpu_count()
    assert Path(cluster.env["SLURM_CONF"]) == cluster.conf
    assert cluster.conf.read_text().startswith("# Written by distributed_ondisk")


@pytest.mark.slurm
@pytest.mark.integration
def test_srun_runs_tasks_concurrently(cluster: SlurmCluster, jobdir: Path) -> None:
    ntasks = min(2, cluster.cpus)
    out = cluster.run(["srun", "-N1", f"-n{ntasks}", "hostname"], JOB_TIMEOUT_S).stdout
    assert out.split() == [socket.gethostname()] * ntasks
    # Each task gets its own rank, and they run at the same time: every task
    # checks in, then waits (at most 30 s) until all tasks have checked in.
    barrier = (
        'touch "ready_$SLURM_PROCID"; for i in $(seq 300); do '
        '[ "$(ls ready_* | wc -l)" -ge "$SLURM_NPROCS" ] && '
        'echo "$SLURM_PROCID $SLURM_NPROCS" && exit 0; sleep 0.1; done; exit 1'
    )
    out = cluster.run(
        ["srun", "-N1", f"-n{ntasks}", "bash", "-c", barrier], JOB_TIMEOUT_S, cwd=jobdir
    ).stdout
    assert sorted(out.splitlines()) == [f"{r} {ntasks}" for r in range(ntasks)]


@pytest.mark.slurm
@pytest.mark.integration
def test_sbatch_wait_writes_file_and_reports_failure(cluster: SlurmCluster, jobdir: Path) -> None:
    ntasks = min(2, cluster.cpus)
    # What run_on_cluster.bash's multi-task jobs do: job steps with srun inside
    # the batch job, and the node list through scontrol.
    script = jobdir / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -J write-file\n"
        'echo "job $SLURM_JOB_ID on $(scontrol show hostnames "$SLURM_JOB_NODELIST")"'
        " > result.txt\n"
        "srun bash -c 'echo task $SLURM_PROCID' | sort >> result.txt\n"
    )
    job_id = _sbatch(cluster, jobdir, "--wait", f"--ntasks={ntasks}", str(script))
    expected = [f"job {job_id} on {cluster.node}"] + [f"task {r}" for r in range(ntasks)]
    assert (jobdir / "result.txt").read_text().splitlines() == expected
    assert cluster.job_states(job_id) == ["COMPLETED"]
    failing = _sbatch(cluster, jobdir, "--wrap", "exit 3")
    assert cluster.wait_for_job(failing, JOB_TIMEOUT_S) == ["FAILED"]
    exit_code = cluster.run(["scontrol", "show", "job", "-o", failing]).stdout
    assert "ExitCode=3:0" in exit_code.split()


@pytest.mark.slurm
@pytest.mark.integration
def test_array_job_runs_every_task(cluster: SlurmCluster, jobdir: Path) -> None:
    job_id = _sbatch(
        cluster,
        jobdir,
        "--array=0-3",
        "--wrap",
        "start=$(date +%s.%N); sleep 1; "
        'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $start $(date +%s.%N)" '
        "> task_$SLURM_ARRAY_TASK_ID.txt",
    )
    assert cluster.wait_for_job(job_id, JOB_TIMEOUT_S) == ["COMPLETED"] * 4
    written = sorted(p.name for p in jobdir.glob("task_*.txt"))
    assert written == [f"task_{i}.txt" for i in range(4)]
    spans = []
    for i in range(4):
        array_id, task_id, start, end = (jobdir / f"task_{i}.txt").read_text().split()
        assert (array_id, task_id) == (job_id, str(i))
        spans.append((float(start), float(end)))
    if cluster.cpus >= 2:
        # 1-CPU tasks share the node: some two of them ran at the same time.
        assert any(a[0] < b[1] and b[0] < a[1] for a in spans for b in spans if a is not b)


@pytest.mark.slurm
@pytest.mark.integration
def test_afterok_dependency_runs_after_first_job(cluster: SlurmCluster, jobdir: Path) -> None:
    first = _sbatch(cluster, jobdir, "--wrap", "sleep 2; date +%s.%N > first_done")
    # The second job fails unless the first one's output already exists.
    second = _sbatch(
        cluster,
        jobdir,
        f"--dependency=afterok:{first}",
        "--wrap",
        "test -f first_done && date +%s.%N > second_start",
    )
    assert cluster.wait_for_job(second, JOB_TIMEOUT_S) == ["COMPLETED"]
    assert float((jobdir / "second_start").read_text()) >= float(
        (jobdir / "first_done").read_text()
    )
    assert cluster.job_states(first) == ["COMPLETED"]

    # A job whose dependency fails never runs; --kill-on-invalid-dep cancels it.
    failed = _sbatch(cluster, jobdir, "--wrap", "exit 1")
    never = _sbatch(
        cluster,
        jobdir,
        f"--dependency=afterok:{failed}",
        "--kill-on-invalid-dep=yes",
        "--wrap",
        "touch never_ran",
    )
    assert cluster.wait_for_job(never, JOB_TIMEOUT_S) == ["CANCELLED"]
    assert cluster.job_states(failed) == ["FAILED"]
    assert not (jobdir / "never_ran").exists()


@pytest.mark.slurm
@pytest.mark.integration
def test_second_user_joins_and_leaves_without_stopping(cluster: SlurmCluster) -> None:
    other = ensure_slurm_cluster()
    assert not other.started_here
    assert other.conf == cluster.conf
    other.stop()
    other.stop()  # a second stop is a no-op
    assert cluster.run(["sinfo", "-h", "-o", "%T"]).stdout.strip() == "idle"


def test_unavailable_reason_names_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    reason = slurm_unavailable_reason()
    assert reason is not None and "not root (uid 1000)" in reason
    with pytest.raises(ClusterError, match="not root"):
        ensure_slurm_cluster()


def test_unavailable_reason_names_missing_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        slurm_cluster, "_which", lambda name: None if name in ("sbatch", "munged") else "/bin/true"
    )
    reason = slurm_unavailable_reason()
    assert reason is not None and "sbatch, munged" in reason
