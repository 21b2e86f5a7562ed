"""``build_index``'s arguments checked and turned into what the build uses, before any
work: the metric and shard count, the memory amounts, the output and temporary paths
(local folders: the shards are memory-mapped), and the runner."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed_ondisk.autobuild.faiss_files import check_index_path, parts_dir, temp_dir_for
from distributed_ondisk.autobuild.index_key import parse_memory
from distributed_ondisk.autobuild.mips import METRICS
from distributed_ondisk.errors import InputError
from distributed_ondisk.workdir import Workdir


@dataclass(frozen=True)
class Limits:
    """The checked scalar options."""

    budget: int  # max_index_memory_usage, bytes
    memory: int  # current_memory_available, bytes


@dataclass(frozen=True)
class Paths:
    """Where the build writes: the faiss file(s), their parts folder, the temporary
    folder (``temp_given``: the user's, kept even when empty) and the infos JSON."""

    index_path: Path
    parts: Path
    temp: Path
    temp_given: bool
    infos: Path

    @property
    def parts_wd(self) -> Workdir:
        return Workdir(self.parts)

    @property
    def temp_wd(self) -> Workdir:
        return Workdir(self.temp)


def local_dir(path: str | os.PathLike, what: str) -> Path:
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise InputError(
            f"{what} {text!r}: must be a local (or shared, mounted) path: the "
            "on-disk shards are memory-mapped; only the embeddings may be URLs"
        )
    return Path(os.path.expanduser(text)).absolute()


def check_options(
    *,
    distributed: str | None,
    metric_type: str,
    nb_indices_to_keep: int,
    max_index_memory_usage: str,
    current_memory_available: str,
    eval_queries: int,
) -> Limits:
    if distributed == "pyspark":
        from distributed_ondisk.extras import require

        require("spark", "distributed='pyspark'")
    if metric_type not in METRICS:
        raise InputError(f"metric_type {metric_type!r}: expected one of {', '.join(METRICS)}")
    if not isinstance(nb_indices_to_keep, int) or nb_indices_to_keep < 1:
        raise InputError(f"nb_indices_to_keep must be an integer >= 1, got {nb_indices_to_keep!r}")
    limits = Limits(parse_memory(max_index_memory_usage), parse_memory(current_memory_available))
    if not isinstance(eval_queries, int) or eval_queries < 0:
        raise InputError(f"eval_queries must be an integer >= 0, got {eval_queries!r}")
    return limits


def build_paths(
    index_path: str,
    index_infos_path: str,
    temporary_indices_folder: str | None,
    nb_indices_to_keep: int,
) -> Paths:
    out = local_dir(index_path, "index_path")
    check_index_path(out, nb_indices_to_keep)
    temp = local_dir(temporary_indices_folder or temp_dir_for(out), "temporary_indices_folder")
    return Paths(
        out,
        parts_dir(out),
        temp,
        temporary_indices_folder is not None,
        local_dir(index_infos_path, "index_infos_path"),
    )


def make_runner(distributed: str | None, nb_cores: int | None) -> Any:
    if distributed is None:
        from distributed_ondisk.autobuild.local import LocalRunner

        return LocalRunner(nb_cores or os.cpu_count() or 1)
    if distributed == "pyspark":
        from distributed_ondisk.autobuild.pyspark import SparkRunner

        return SparkRunner()
    raise InputError(f"distributed={distributed!r}: expected None or 'pyspark'")


def key_for(index_key: str | None, d: int, d_index: int) -> str | None:
    """A user's key names the data's d (``RR64``); with "ip" the stages work in d + 1."""
    if not index_key or d == d_index:
        return index_key
    return re.sub(rf"\b(RR|PCA){d},", rf"\g<1>{d_index},", index_key)
