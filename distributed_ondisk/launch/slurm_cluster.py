"""The single-node test Slurm cluster, from Python (tests and fixtures).

``scripts/slurm_single_node.bash`` does the work (config, munged, slurmctld,
slurmd); this module decides whether it can run here, starts it once for any
number of concurrent users and stops it when the last one is done::

    reason = slurm_unavailable_reason()      # None, or why not (for pytest.skip)
    cluster = ensure_slurm_cluster()         # started, or reused when running
    cluster.run(["srun", "-n2", "hostname"])  # or subprocess.run(..., env=cluster.env)
    cluster.stop()

Concurrent users (two pytest processes) each hold a lease file; ``stop`` stops
the daemons only when no live lease remains and the cluster was started by
this module, so a cluster someone started by hand is left running.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from distributed_ondisk.errors import ClusterError
from distributed_ondisk.launch.slurm import FINAL_STATES

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "slurm_single_node.bash"
INSTALLER = REPO_ROOT / "scripts" / "install_system_deps.bash"
DEFAULT_DIR = Path("/var/tmp/distributed_ondisk_slurm")
CLIENT_COMMANDS = ("sinfo", "srun", "sbatch", "squeue", "scontrol", "scancel")
DAEMONS = ("slurmctld", "slurmd", "munged")
# The script waits at most 60 s for the node to become idle; leave it room.
START_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 90.0


def cluster_dir() -> Path:
    """The cluster's directory: $SLURM_TEST_DIR or /var/tmp/distributed_ondisk_slurm."""
    return Path(os.environ.get("SLURM_TEST_DIR") or DEFAULT_DIR)


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login root shell may lack in PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def slurm_unavailable_reason() -> str | None:
    """Why the test cluster cannot run on this machine, or None when it can."""
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing (the Slurm test cluster needs a source checkout)"
    if not hasattr(os, "geteuid") or os.uname().sysname != "Linux":
        return "the single-node Slurm cluster needs Linux"
    if os.geteuid() != 0:
        return (
            f"not root (uid {os.geteuid()}): slurmd and munged must run as root "
            f"to start the single-node Slurm cluster"
        )
    missing = [c for c in CLIENT_COMMANDS + DAEMONS + ("flock", "runuser") if _which(c) is None]
    if missing:
        how = (
            f"run `bash {INSTALLER.relative_to(REPO_ROOT)}` (installs slurm-wlm and munge)"
            if shutil.which("apt-get")
            else "and there is no apt-get to install slurm-wlm/munge"
        )
        return f"Slurm/munge commands not installed: {', '.join(missing)}; {how}"
    return None


def _clean_env(conf: Path) -> dict[str, str]:
    """os.environ with SLURM_CONF pointing at our cluster and no inherited job
    variables: srun run inside a foreign allocation (SLURM_JOB_ID set) would
    try to join that allocation instead of making its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    return env


@dataclass
class SlurmCluster:
    """A running single-node cluster.  ``env`` is what sbatch/srun need."""

    conf: Path
    directory: Path
    node: str
    cpus: int
    partition: str
    started_here: bool
    _lease: Path | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return _clean_env(self.conf)

    def run(
        self,
        args: Sequence[str],
        timeout_s: float = 120.0,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (or anything) against this cluster; a non-zero
        exit or a timeout raises ClusterError with the command and its output."""
        try:
            proc = subprocess.run(
                list(args),
                env=self.env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{' '.join(args)!r} did not finish within {timeout_s:g} s "
                f"(output so far: {exc.stdout!r} {exc.stderr!r})"
            ) from exc
        if proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)!r} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def job_states(self, job_id: str) -> list[str]:
        """JobState of the job, one entry per task of an array job."""
        out = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        states = [
            f.split("=", 1)[1]
            for line in out.splitlines()
            for f in line.split()
            if f.startswith("JobState=")
        ]
        if not states:
            raise ClusterError(f"scontrol shows no state for job {job_id}: {out!r}")
        return states

    def wait_for_job(self, job_id: str, timeout_s: float = 300.0, poll_s: float = 0.2) -> list[str]:
        """Poll until every task of the job has ended; return their states.
        Faster than ``sbatch --wait``, whose polling interval grows to 10 s."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.job_states(job_id)
            if all(state in FINAL_STATES for state in states):
                return states
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"job {job_id} not finished after {timeout_s:g} s " f"(states {states})"
                )
            time.sleep(poll_s)

    def stop(self) -> None:
        """Give up this lease; stop the daemons when it was the last one and
        the cluster was started by ensure_slurm_cluster (not by hand)."""
        if self._lease is None:
            return
        with _locked(self.directory):
            self._lease.unlink(missing_ok=True)
            self._lease = None
            if _live_leases(self.directory) or not (self.directory / "managed").exists():
                return
            _script("stop", self.directory, STOP_TIMEOUT_S)
            (self.directory / "managed").unlink(missing_ok=True)
            log.info("stopped the Slurm test cluster in %s", self.directory)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "helper.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_leases(directory: Path) -> list[Path]:
    """Lease files of live processes; those of dead ones (a killed pytest) are removed."""
    live = []
    for lease in sorted((directory / "leases").glob("*.lease")):
        try:
            pid = int(lease.name.split(".", 1)[0])
        except ValueError:
            pid = -1
        if pid > 0 and _pid_alive(pid):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)
    return live


def _script(
    action: str, directory: Path, timeout_s: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SLURM_TEST_DIR=str(directory))
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    cmd = ["bash", str(SCRIPT), action]
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"`{' '.join(cmd)}` did not finish within {timeout_s:g} s; "
            f"stderr so far: {exc.stderr!r}"
        ) from exc
    if check and proc.returncode != 0:
        raise ClusterError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" f"{proc.stderr.strip()[-4000:]}"
        )
    return proc


def _parse_env_lines(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def ensure_slurm_cluster(directory: Path | None = None) -> SlurmCluster:
    """Start the single-node cluster, or join it when it already runs, and
    return it with a lease; call ``stop()`` when done.  Raises ClusterError
    when this machine cannot run it (see slurm_unavailable_reason) or when
    the daemons fail to start (the message carries their log tails)."""
    reason = slurm_unavailable_reason()
    if reason is not None:
        raise ClusterError(reason)
    directory = directory or cluster_dir()
    with _locked(directory):
        status = _script("status", directory, 30.0, check=False)
        started_here = status.returncode != 0
        if started_here:
            t0 = time.monotonic()
            try:
                status = _script("start", directory, START_TIMEOUT_S)
            except ClusterError:
                # Leave no half-started daemons behind.
                _script("stop", directory, STOP_TIMEOUT_S, check=False)
                raise
            (directory / "managed").touch()
            log.info("Slurm test cluster idle after %.1f s (%s)", time.monotonic() - t0, directory)
        info = _parse_env_lines(status.stdout)
        try:
            cluster = SlurmCluster(
                conf=Path(info["SLURM_CONF"]),
                directory=directory,
                node=info["SLURM_NODE"],
                cpus=int(info["SLURM_CPUS"]),
                partition=info["SLURM_PARTITION"],
                started_here=started_here,
            )
        except (KeyError, ValueError) as exc:
            raise ClusterError(
                f"{SCRIPT} printed no usable SLURM_CONF/SLURM_NODE/SLURM_CPUS/"
                f"SLURM_PARTITION lines: {status.stdout!r}"
            ) from exc
        leases = directory / "leases"
        leases.mkdir(exist_ok=True)
        cluster._lease = leases / f"{os.getpid()}.{uuid.uuid4().hex}.lease"
        cluster._lease.touch()
    return cluster
