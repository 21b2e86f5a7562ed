"""The pipeline's settings: one typed record, read from the environment variables that
``run_on_cluster.bash`` has always documented (``K``, ``NITER``, ``NVSLICES``, ``SLURM_*``...)
or from ``python -m distributed_ondisk pipeline`` flags (``--k``, ``--niter``...).

An unset or empty variable takes its default, as the bash ``: "${K:=1024}"`` did; flags
(``HOLDOUT``, ``SHUFFLE``) are on when non-empty.  :meth:`Settings.to_env` writes them
back as variables: the stage tasks on Slurm nodes read the values resolved on the
submitting machine (``NCORES`` included), exactly as the exported bash variables were.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed_ondisk.errors import InputError
from distributed_ondisk.workdir import Workdir


def _nproc() -> int:
    # nproc counts the cores this process may use (affinity), not the machine's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _setting(default: Any, help_: str, kind: type = str) -> Any:
    return field(default=default, metadata={"help": help_, "kind": kind})


@dataclass(frozen=True)
class Settings:
    """Every setting; the field ``k`` is the variable ``K`` and the flag ``--k``."""

    python: str = _setting("", "the Python of every stage process (default: this one)")
    data: str = _setting("bundled", "vector file (fvecs/bvecs/npy/fbin...), or 'bundled'")
    queries: str = _setting("", "query file; default: NQ seeded sampled rows of DATA")
    nq: int = _setting(10000, "queries sampled from DATA (or held out, HOLDOUT=1)", int)
    holdout: bool = _setting(False, "hold NQ rows of DATA out of the index as queries", bool)
    shuffle: bool = _setting(False, "with HOLDOUT: hold out a random sample", bool)
    workdir: str = _setting("./work", "everything the pipeline writes (absolute once resolved)")
    k: int = _setting(1024, "number of centroids = nlist of the index", int)
    niter: int = _setting(10, "k-means iterations", int)
    seed: int = _setting(1234, "seed of k-means, the trained index and the query sample", int)
    max_points_per_centroid: int = _setting(256, "k-means sample size per centroid", int)
    kmeans_servers: int = _setting(2, "local k-means servers", int)
    train_rows: int = _setting(200000, "rows used to train the encoder", int)
    encoder: str = _setting("SQ6", "SQ6 | SQ8 | SQfp16 | PQ<m>")
    ef_search: int = _setting(128, "HNSW efSearch of the coarse quantizer", int)
    nvslices: int = _setting(4, "vertical slices (parallel add jobs)", int)
    nhslices: int = _setting(2, "horizontal on-disk shards", int)
    search_servers: int = _setting(2, "search servers (each serves NHSLICES/SEARCH_SERVERS)", int)
    nprobe: str = _setting("1,4,16,64", "nprobe values of the recall report")
    ncores: int = _setting(0, "local parallelism (default: the usable cores)", int)
    train_nt: int = _setting(0, "threads building the trained index (default NCORES)", int)
    gpu: int = _setting(-2, "k-means servers: -2 CPU, -1 all GPUs, or a GPU id", int)
    secret_file: str = _setting("", "RPC secret (default: WORKDIR/rpc.secret, created 0600)")
    wait_timeout: int = _setting(600, "seconds to wait for servers to come up", int)
    slurm_partition: str = _setting("", "Slurm partition (default: the cluster's)")
    slurm_time: str = _setting("4:00:00", "time limit of every Slurm job")
    slurm_gpus_per_node: int = _setting(0, "GPUs per node of the k-means job", int)
    kmeans_nodes: int = _setting(1, "nodes of the Slurm k-means job", int)
    servers_per_node: int = _setting(1, "k-means servers per node (Slurm)", int)
    cpus_per_task: int = _setting(1, "CPUs of each Slurm task", int)
    max_parallel_tasks: int = _setting(
        0, "array jobs: at most this many at once (0: no limit)", int
    )

    @staticmethod
    def env_name(name: str) -> str:
        return name.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """From ``env`` (default ``os.environ``), then ``given`` (flags) over it; resolved."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if given.get(f.name) is not None:
                values[f.name] = given[f.name]
                continue
            raw = env.get(cls.env_name(f.name), "")
            if raw == "":
                continue
            kind = f.metadata["kind"]
            if kind is bool:
                values[f.name] = True  # bash tested [ -n "$HOLDOUT" ]
            elif kind is int:
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise InputError(
                        f"{cls.env_name(f.name)}={raw!r}: expected an integer"
                    ) from None
            else:
                values[f.name] = raw
        return cls(**values).resolved()

    def resolved(self) -> Settings:
        """Defaults that depend on other settings filled in, the work dir absolute."""
        workdir = os.path.realpath(os.path.expanduser(self.workdir))
        ncores = self.ncores or _nproc()
        return dataclasses.replace(
            self,
            python=self.python or sys.executable,
            workdir=workdir,
            ncores=ncores,
            train_nt=self.train_nt or ncores,
            # absolute: Slurm jobs run in the work dir, not where this was called
            secret_file=(
                os.path.abspath(os.path.expanduser(self.secret_file))
                if self.secret_file
                else str(Workdir.from_arg(workdir).secret)
            ),
        )

    def to_env(self) -> dict[str, str]:
        """The settings as the environment variables of the same names."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[self.env_name(f.name)] = ("1" if v else "") if isinstance(v, bool) else str(v)
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def add_setting_args(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``--k``, ``--max_points_per_centroid``...), default unset."""
    g = parser.add_argument_group(
        "settings (unset: the environment variable of the same name in capitals, else default)"
    )
    for f in dataclasses.fields(Settings):
        kind = f.metadata["kind"]
        flag = f"--{f.name}"
        env = Settings.env_name(f.name)
        if kind is bool:
            g.add_argument(
                flag, action="store_true", default=None, help=f"{f.metadata['help']} ({env})"
            )
        else:
            g.add_argument(
                flag,
                type=kind,
                default=None,
                metavar=env,
                help=f.metadata["help"]
                + ("" if "default" in f.metadata["help"] else f" (default {f.default!r})"),
            )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Settings)}
    return Settings.from_env(env, **given)
