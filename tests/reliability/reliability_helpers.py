"""Helpers of the reliability suite (fixtures in conftest.py): small clustered data, one finished
``run_on_cluster.bash local_pipeline`` work dir (the uninterrupted reference, built
once per session), the stages' exact command lines, real server processes on port
0 waited for by ping, and the deterministic crash wrapper (crashpoint.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distributed_ondisk.atomic import TMP_MARKER
from distributed_ondisk.ondisk.manifest import MANIFEST_SUFFIX, verify_manifest
from distributed_ondisk.rpc import load_secret, wait_ready

REPO = Path(__file__).resolve().parents[2]
CRASHPOINT = Path(__file__).resolve().with_name("crashpoint.py")
N, D, NQ = 6000, 16, 100
N_DB = N  # every row is indexed (the NQ queries are a sample of them)
# The pipeline settings of every run in this suite (small: the whole suite stays
# within minutes on 2 cores).  TRAIN_NT=1: the HNSW graph of the trained index is
# then reproducible, so "identical to the uninterrupted run" can mean identical bytes.
SETTINGS = {
    "K": "32",
    "NITER": "4",
    "NQ": str(NQ),
    "NVSLICES": "3",
    "NHSLICES": "2",
    "SEARCH_SERVERS": "2",
    "KMEANS_SERVERS": "2",
    "NPROBE": "1,8",
    "TRAIN_ROWS": "3000",
    "TRAIN_NT": "1",
    "NCORES": "2",
    "SEED": "1234",
    "WAIT_TIMEOUT": "120",
}
NV, NH = int(SETTINGS["NVSLICES"]), int(SETTINGS["NHSLICES"])


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_pipeline(workdir: Path, data: Path, timeout: float = 300, **extra: str):
    env = base_env(PYTHON=sys.executable, DATA=str(data), WORKDIR=str(workdir), **SETTINGS)
    env.update(extra)
    return subprocess.run(
        ["bash", str(REPO / "run_on_cluster.bash"), "local_pipeline"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Reference:
    """The uninterrupted run: its work dir, data, secret and final checksums."""

    root: Path
    data: Path
    secret_file: Path
    checksums: dict[str, str]  # relative path -> sha256 of every final output

    @property
    def secret(self) -> bytes:
        return load_secret(self.secret_file)


OUTPUTS = [
    "centroids.npy",
    "trained.index",
    *[f"vslices/vslice_{i:04d}_of_{NV:04d}.index" for i in range(NV)],
    *[
        f"hslices/hslice_{j:04d}_of_{NH:04d}.{ext}"
        for j in range(NH)
        for ext in ("index", "invlists")
    ],
]


def checksums(root: Path, names: Sequence[str] = OUTPUTS) -> dict[str, str]:
    return {n: sha(root / n) for n in names if (root / n).exists()}


def seed_workdir(ref: Reference, dest: Path, upto: Sequence[str]) -> Path:
    """A fresh work dir holding the reference's inputs and the outputs ``upto``
    (with their manifests), as if the stages before the one under test had run."""
    dest.mkdir(parents=True)
    for name in ("data.fvecs", "dataset.json", "queries.npy", "rpc.secret", *upto):
        src = ref.root / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
        m = src.with_name(src.name + MANIFEST_SUFFIX)
        if m.exists():
            shutil.copy2(m, dest / m.relative_to(ref.root))
    (dest / "vslices").mkdir(exist_ok=True)
    (dest / "hslices").mkdir(exist_ok=True)
    return dest


def range_of(i: int, n: int) -> tuple[int, int]:
    return N_DB * i // n, N_DB * (i + 1) // n


def stage_command(w: Path, stage: str, i: int = 0, servers: Sequence[str] = ()) -> list[str]:
    """The stage's command line exactly as run_on_cluster.bash runs it."""
    s = SETTINGS
    if stage == "kmeans_client":
        return [
            "distributed_kmeans.py",
            "--client",
            "--servers",
            " ".join(servers),
            "--nt",
            s["NCORES"],
            "--k",
            s["K"],
            "--niter",
            s["NITER"],
            "--seed",
            s["SEED"],
            "--max_points_per_centroid",
            "256",
            "--out",
            str(w / "centroids.npy"),
            "--checkpoint",
            str(w / "kmeans.checkpoint.npz"),
            "--resume",
        ]
    if stage == "trained":
        return [
            "make_trained_index.py",
            "--centroids",
            str(w / "centroids.npy"),
            "--indata",
            str(w / "data.fvecs"),
            "--i0",
            "0",
            "--i1",
            s["TRAIN_ROWS"],
            "--out",
            str(w / "trained.index"),
            "--sq",
            "SQ6",
            "--efSearch",
            "128",
            "--seed",
            s["SEED"],
            "--nt",
            s["TRAIN_NT"],
        ]
    if stage == "vslice":
        i0, i1 = range_of(i, NV)
        return [
            "make_index_vslice.py",
            "--inputindex",
            str(w / "trained.index"),
            "--input",
            str(w / "data.fvecs"),
            "--i0",
            str(i0),
            "--i1",
            str(i1),
            "-o",
            str(w / f"vslices/vslice_{i:04d}_of_{NV:04d}.index"),
            "--nt",
            "1",
        ]
    if stage == "hslice":
        return [
            "merge_to_ondisk.py",
            "--inputs",
            *[str(w / f"vslices/vslice_{v:04d}_of_{NV:04d}.index") for v in range(NV)],
            "--nslice",
            str(NH),
            "--slice_no",
            str(i),
            "--trained",
            str(w / "trained.index"),
            "--output",
            str(w / f"hslices/hslice_{i:04d}_of_{NH:04d}.index"),
            "--nt",
            "1",
        ]
    raise ValueError(stage)


def run_stage(
    argv: Sequence[str],
    *,
    crash_at: str | None = None,
    once: Path | None = None,
    trace: Path | None = None,
    secret_file: Path | None = None,
    timeout: float = 180,
):
    """Run a stage script (through the crash wrapper when a crash point is given)."""
    script = str(REPO / argv[0])
    env = base_env()
    if secret_file:
        env["DISTRIBUTED_ONDISK_SECRET_FILE"] = str(secret_file)
    cmd = [sys.executable, script, *argv[1:]]
    if crash_at or trace:
        cmd = [sys.executable, str(CRASHPOINT), script, *argv[1:]]
        env.update(
            CRASH_AT=crash_at or "",
            **({"CRASH_ONCE": str(once)} if once else {}),
            **({"CRASH_TRACE": str(trace)} if trace else {}),
        )
    return subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def killed(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == -signal.SIGKILL


def assert_nothing_half_written(root: Path) -> None:
    """Every manifest under ``root`` verifies (sizes and sha256), every manifest and
    every final-named .npy parses: whatever a crash left, no final name holds a prefix."""
    for m in root.rglob(f"*{MANIFEST_SUFFIX}"):
        json.loads(m.read_text())
        verify_manifest(m.with_name(m.name[: -len(MANIFEST_SUFFIX)]))
    for p in root.rglob("*.npy"):
        if TMP_MARKER not in p.name:
            np.load(p)
    for p in root.rglob("*.npz"):
        if TMP_MARKER not in p.name:
            with np.load(p) as z:
                [z[k] for k in z.files]


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{TMP_MARKER}*")]


class ServerProc:
    """A real server process (distributed_kmeans.py --server or search_server.py) on
    127.0.0.1 port 0; ready when its --when_ready file exists and it answers ping."""

    def __init__(
        self,
        argv: Sequence[str],
        secret_file: Path,
        ready_file: Path,
        *,
        crash_at: str | None = None,
        log: Path | None = None,
    ) -> None:
        self.argv, self.secret_file, self.ready_file = list(argv), secret_file, ready_file
        self.crash_at, self.log_path = crash_at, log or ready_file.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self, timeout: float = 120) -> ServerProc:
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        script = str(REPO / self.argv[0])
        cmd = [
            sys.executable,
            script,
            *self.argv[1:],
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--when_ready",
            str(self.ready_file),
        ]
        env = base_env(DISTRIBUTED_ONDISK_SECRET_FILE=str(self.secret_file))
        if self.crash_at:
            cmd[1:1] = [str(CRASHPOINT)]
            env["CRASH_AT"] = self.crash_at
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- open while the process runs
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=self._log, cwd="/")
        t_end = time.monotonic() + timeout
        while not (self.ready_file.exists() and self.ready_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > t_end:
                raise RuntimeError(f"{cmd} not listening after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)  # polling for the file, then ping; not a fixed wait
        self.address = self.ready_file.read_text().strip()
        wait_ready(self.address, secret=load_secret(self.secret_file), timeout=timeout)
        return self

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.close()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.wait(30)
        with contextlib.suppress(AttributeError):
            self._log.close()


def kmeans_server(
    ref_or_root: Path, i: int, n: int, secret_file: Path, tmp: Path, *, crash_at: str | None = None
) -> ServerProc:
    i0, i1 = range_of(i, n)
    argv = [
        "distributed_kmeans.py",
        "--server",
        "--indata",
        str(ref_or_root / "data.fvecs"),
        "--i0",
        str(i0),
        "--i1",
        str(i1),
        "--nt",
        "1",
        "--gpu",
        "-2",
    ]
    return ServerProc(argv, secret_file, tmp / f"kmeans_{i}_of_{n}.addr", crash_at=crash_at)


def search_server(
    root: Path,
    shards: Sequence[int],
    secret_file: Path,
    tmp: Path,
    *,
    crash_at: str | None = None,
    tag: str = "",
) -> ServerProc:
    argv = [
        "search_server.py",
        "--shards",
        *[str(root / f"hslices/hslice_{j:04d}_of_{NH:04d}.index") for j in shards],
        "--trained",
        str(root / "trained.index"),
    ]
    name = "_".join(map(str, shards))
    return ServerProc(argv, secret_file, tmp / f"search_{name}{tag}.addr", crash_at=crash_at)


@contextlib.contextmanager
def servers(procs: Sequence[ServerProc]) -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    try:
        for p in procs:
            started.append(p.start())
        yield started
    finally:
        for p in procs:
            p.stop()


def queries() -> np.ndarray:
    from distributed_ondisk.datasets import make_queries

    return make_queries(200, D, n_clusters=30, seed=99)
