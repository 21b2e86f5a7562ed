"""The stage command lines, exactly as the pipeline runs them (pure: tested as lists).

:data:`STAGE_COMMAND` is the one place that says how each stage's process is started;
every other argument is built by the functions below from the settings, the work
directory and the prepared data (``db``: its file, ``n_db``: its indexed rows).  Row
ranges come from :func:`distributed_ondisk.ranges.split_range`, the one splitter.
The reliability suite runs these same command lines (its ``stage_command``), and a
test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distributed_ondisk.launch.settings import Settings
from distributed_ondisk.ranges import split_range
from distributed_ondisk.workdir import Workdir

REPO = Path(__file__).resolve().parents[2]
# stage -> the subcommand of ``python -m distributed_ondisk`` that runs it, and the
# script of a source checkout with the same flags (see stage_argv).
STAGE_COMMAND = {
    "kmeans": "distributed_kmeans.py",
    "train": "make_trained_index.py",
    "vslice": "make_index_vslice.py",
    "merge": "merge_to_ondisk.py",
    "search": "combined_index.py",
    "serve": "search_server.py",
}
LAUNCHER_MODULE = "distributed_ondisk.launch.cli"


def stage_argv(python: str, stage: str) -> list[str]:
    """How a stage's process starts: the installed package's subcommand, so the nodes
    need no checkout (``[python, str(REPO / STAGE_COMMAND[stage])]`` runs the scripts)."""
    assert stage in STAGE_COMMAND, stage
    return [python, "-m", "distributed_ondisk", stage]


def launcher_argv(python: str, target: str, *args: str) -> list[str]:
    """A target of this launcher run as its own process (array copies, Slurm jobs)."""
    return [python, "-m", LAUNCHER_MODULE, target, *args]


def kmeans_server(
    s: Settings, db: Path, n_db: int, part: int, nparts: int, host: str, ready: Path, nt: int
) -> list[str]:
    i0, i1 = split_range(n_db, nparts, part)
    return [
        *stage_argv(s.python, "kmeans"),
        *("--server", "--indata", str(db), "--i0", str(i0), "--i1", str(i1)),
        *("--host", host, "--port", "0", "--when_ready", str(ready)),
        *("--nt", str(nt), "--gpu", str(s.gpu)),
    ]


def kmeans_client(s: Settings, wd: Workdir, servers: Sequence[str], nt: int | None) -> list[str]:
    """The client over ``servers``; ``nt`` None leaves its threads to the default (Slurm)."""
    return [
        *stage_argv(s.python, "kmeans"),
        *("--client", "--servers", " ".join(servers)),
        *(("--nt", str(nt)) if nt is not None else ()),
        *("--k", str(s.k), "--niter", str(s.niter), "--seed", str(s.seed)),
        *("--max_points_per_centroid", str(s.max_points_per_centroid)),
        *("--out", str(wd.centroids), "--checkpoint", str(wd.checkpoint), "--resume"),
    ]


def trained(s: Settings, wd: Workdir, db: Path, n_db: int) -> list[str]:
    return [
        *stage_argv(s.python, "train"),
        *("--centroids", str(wd.centroids), "--indata", str(db)),
        *("--i0", "0", "--i1", str(min(s.train_rows, n_db)), "--out", str(wd.trained)),
        *("--sq", s.encoder, "--efSearch", str(s.ef_search), "--seed", str(s.seed)),
        *("--nt", str(s.train_nt)),
    ]


def vslice(s: Settings, wd: Workdir, db: Path, n_db: int, i: int, nt: int) -> list[str]:
    i0, i1 = split_range(n_db, s.nvslices, i)
    return [
        *stage_argv(s.python, "vslice"),
        *("--inputindex", str(wd.trained), "--input", str(db), "--i0", str(i0), "--i1", str(i1)),
        *("-o", str(wd.vslice(i, s.nvslices)), "--nt", str(nt)),
    ]


def hslice(s: Settings, wd: Workdir, j: int, nt: int) -> list[str]:
    return [
        *stage_argv(s.python, "merge"),
        *("--inputs", *map(str, wd.vslices(s.nvslices))),
        *("--nslice", str(s.nhslices), "--slice_no", str(j), "--trained", str(wd.trained)),
        *("--output", str(wd.hslice(j, s.nhslices)), "--nt", str(nt)),
    ]


def shards_of_server(s: Settings, wd: Workdir, server: int, nservers: int) -> list[Path]:
    """The shards search server ``server`` of ``nservers`` serves: dealt round-robin."""
    return [wd.hslice(j, s.nhslices) for j in range(server, s.nhslices, nservers)]


def search_server(
    s: Settings, wd: Workdir, server: int, nservers: int, host: str, ready: Path
) -> list[str]:
    return [
        *stage_argv(s.python, "serve"),
        *("--shards", *map(str, shards_of_server(s, wd, server, nservers))),
        *("--trained", str(wd.trained), "--host", host, "--port", "0"),
        *("--when_ready", str(ready)),
    ]


def search_eval(
    s: Settings, wd: Workdir, db: Path, n_db: int, servers: Sequence[str], label: str
) -> list[str]:
    return [
        *stage_argv(s.python, "search"),
        *("--shards", str(wd.hslice_dir), "--trained", str(wd.trained)),
        *("--queries", str(wd.queries), "--database", str(db), "--database-rows", str(n_db)),
        *("--k", "100", "--nprobe", s.nprobe, "--ef-search", str(s.ef_search), "--in-ram"),
        *("--servers", ",".join(servers), "--plot", str(wd.recall_plot)),
        *("--json", str(wd.search_report), "--queries-label", label),
    ]


def kmeans_test(s: Settings, db: Path, n_db: int, level: int) -> list[str]:
    """test_kmeans_0 / test_kmeans_1: k-means in process (faiss's, then this toolkit's)."""
    return [
        *stage_argv(s.python, "kmeans"),
        *("--indata", str(db), "--i1", str(n_db), "--k", str(s.k), "--niter", str(s.niter)),
        *("--seed", str(s.seed), "--gpu", str(s.gpu), "--test", str(level)),
    ]


def kmeans_test_client(s: Settings, servers: Sequence[str]) -> list[str]:
    """test_kmeans_2's client (no output file: it prints the objective)."""
    return [
        *stage_argv(s.python, "kmeans"),
        *("--client", "--servers", " ".join(servers), "--k", str(s.k)),
        *("--niter", str(s.niter), "--seed", str(s.seed)),
    ]
