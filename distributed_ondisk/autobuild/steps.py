"""The steps of ``build_index`` (see :mod:`distributed_ondisk.autobuild.api`): the plan
made from the input headers (:func:`plan_build`), then :class:`Build`'s steps in order,
each timed as a stage: scan, k-means, trained index, vslices (and ids), merge, faiss
files.  The tasks each step runs are in :mod:`distributed_ondisk.autobuild.tasks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distributed_ondisk.autobuild import tasks
from distributed_ondisk.autobuild.faiss_files import data_file, index_files, write_faiss_indexes
from distributed_ondisk.autobuild.index_key import IndexSpec, choose_index_key
from distributed_ondisk.autobuild.inputs import InputFile
from distributed_ondisk.autobuild.mips import augment, write_metric
from distributed_ondisk.autobuild.options import Limits, Paths, key_for, make_runner
from distributed_ondisk.autobuild.placement import kmeans_placement
from distributed_ondisk.autobuild.plan import (
    holdout_rows,
    plan_pieces,
    rows_by_piece,
    rows_per_piece_for,
)
from distributed_ondisk.autobuild.training import PlannedDataset
from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.loop import KMeansConfig, KMeansResult

log = logging.getLogger(__name__)


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("stage %s", name)
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("stage %s done in %.2f s", name, self.seconds[name])
        return out


@dataclasses.dataclass
class Build:
    """One build: what was decided before any vector is read, and each step after."""

    paths: Paths
    limits: Limits
    files: list[InputFile]
    runner: Any
    total: int  # input rows
    n: int  # indexed rows
    d: int
    d_index: int  # d + 1 for "ip" (see mips.py)
    spec: IndexSpec
    reasons: list[str]
    train_bytes: int
    on_driver: bool
    ctx: tasks.BuildContext
    kcfg: KMeansConfig
    stages: Stages
    max_norm: float | None = None
    # the rows k-means will read (sorted global rows, their vectors), from the scan
    prefetch: tuple[np.ndarray, list[np.ndarray]] | None = None

    @property
    def nb_shards(self) -> int:
        return self.ctx.nb_hslices

    def scan(self, wanted: np.ndarray) -> None:
        """Read every piece once (refusing bad rows before training), keeping the rows of
        ``wanted`` (as indexed) for k-means; for "ip", sets the largest norm."""
        groups = dict(rows_by_piece(wanted, self.ctx.pieces))
        scanned = self.stages.run(
            "scan_inputs",
            lambda: self.runner.map(
                functools.partial(tasks.scan_piece_keeping, self.ctx),
                [(i, groups.get(i)) for i in range(len(self.ctx.pieces))],
                desc="scan",
            ),
        )
        kept = [x for x, _ in scanned if x is not None]
        if self.ctx.metric_type == "ip":
            self.max_norm = float(np.sqrt(max(sq for _, sq in scanned)))
            self.ctx = dataclasses.replace(self.ctx, max_norm=self.max_norm)
            kept = [augment(x, self.max_norm) for x in kept]
            log.info(
                "metric ip: rows augmented to d=%d (largest norm %.6g)", self.d_index, self.max_norm
            )
        self.prefetch = (wanted, kept)

    def kmeans(self) -> KMeansResult:
        """k-means (centroids into the parts folder), then the encoder's rows kept aside."""
        from distributed_ondisk.kmeans.loop import train_kmeans
        from distributed_ondisk.vectors import write_vectors

        wd = self.paths.parts_wd
        wd.root.mkdir(parents=True, exist_ok=True)
        self.paths.temp.mkdir(parents=True, exist_ok=True)
        data = PlannedDataset(self.runner, self.ctx, self.n, self.d_index, on_driver=self.on_driver)
        if self.prefetch is not None:
            wanted, kept = self.prefetch
            self.prefetch = None  # the dataset's one copy is all that stays in memory
            data.prefetched(wanted, np.concatenate(kept))
            del kept
        try:
            km = self.stages.run("kmeans", lambda: train_kmeans(data, self.kcfg))
            write_vectors(wd.centroids, km.centroids)
            write_vectors(self.paths.temp_wd.training_rows, data.training_rows())
        finally:
            data.close()
        return km

    def trained_index(self, seed: int) -> None:
        from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index

        c = self.spec.cfg
        cfg = TrainedIndexConfig(encoder=c.encoder, rotation=c.rotation, hnsw_m=c.hnsw_m, seed=seed)
        wd = self.paths.parts_wd
        self.stages.run(
            "trained_index",
            lambda: make_trained_index(
                wd.centroids, self.paths.temp_wd.training_rows, wd.trained, cfg, force=True
            ),
        )

    def _each(self, name: str, fn: Callable[[tasks.BuildContext, int], Any], count: int) -> Any:
        return self.stages.run(
            name, lambda: self.runner.map(functools.partial(fn, self.ctx), range(count), desc=name)
        )

    def shards(self, with_ids: bool) -> tuple[list[dict], list[dict], list[dict]]:
        """vslices (and ids), the merge into shards, the faiss files; the stats of each."""
        npieces = len(self.ctx.pieces)
        vslices = self._each("vslices", tasks.build_vslice, npieces)
        if with_ids:
            tasks.remove_stale_ids(self.ctx)
            self._each("ids", tasks.write_ids, npieces)
        tasks.check_vslice_set(self.ctx, self.n)
        shards = self._each("merge", tasks.merge_shard, self.nb_shards)
        wd = self.paths.parts_wd
        faiss_files = self.stages.run(
            "faiss_files",
            lambda: write_faiss_indexes(
                wd.trained,
                wd.hslices(self.nb_shards),
                self.paths.index_path,
                self.d if self.ctx.metric_type == "ip" else None,
            ),
        )
        write_metric(wd, self.ctx.metric_type, self.max_norm, self.d)
        return vslices, shards, faiss_files

    def remove_temporaries(self) -> None:
        for i in range(len(self.ctx.pieces)):
            for p in (
                self.ctx.vslice_path(i),
                self.paths.temp_wd.manifest(self.ctx.vslice_path(i)),
            ):
                p.unlink(missing_ok=True)
        self.paths.temp_wd.training_rows.unlink(missing_ok=True)
        shutil.rmtree(self.paths.temp_wd.vslice_dir, ignore_errors=True)
        if not self.paths.temp_given:
            with contextlib.suppress(OSError):  # ours, and empty unless other files
                self.paths.temp.rmdir()


def plan_build(
    files: list[InputFile],
    paths: Paths,
    limits: Limits,
    stages: Stages,
    *,
    distributed: str | None,
    nb_cores: int | None,
    metric_type: str,
    index_key: str | None,
    nb_indices_to_keep: int,
    id_columns: Sequence[str] | None,
    kmeans_niter: int,
    max_points_per_centroid: int,
    seed: int,
    eval_queries: int,
    eval_holdout: bool,
    fault: Callable[[str, int], None] | None,
) -> Build:
    """Everything decided from the headers: rows, index key, k-means placement, pieces."""
    total, d = sum(f.rows for f in files), next(f.d for f in files if f.rows)
    n = holdout_rows(total, eval_queries)[0] if eval_holdout else total
    d_index = d + 1 if metric_type == "ip" else d
    spec, reasons = choose_index_key(n, d_index, limits.budget, key_for(index_key, d, d_index))
    for line in reasons:
        log.info("index key: %s", line)
    if nb_indices_to_keep > spec.nlist:
        raise InputError(
            f"nb_indices_to_keep={nb_indices_to_keep} is more than nlist="
            f"{spec.nlist}: a shard holds at least one list"
        )
    n_train = min(n, spec.nlist * max_points_per_centroid)
    runner = make_runner(distributed, nb_cores)
    train_bytes, on_driver = kmeans_placement(
        n_train, d_index, spec.nlist, limits.memory, runner.nb_workers, distributed is None
    )
    pieces = plan_pieces(
        [f.rows for f in files], rows_per_piece_for(n, d, runner.nb_workers, limits.memory), limit=n
    )
    ctx = tasks.BuildContext(
        tuple(files),
        tuple(pieces),
        str(paths.parts),
        str(paths.temp),
        nb_indices_to_keep,
        tuple(id_columns or ()),
        runner.task_threads,
        fault,
        metric_type,
        lists_files=tuple(
            str(data_file(p)) for p in index_files(paths.index_path, nb_indices_to_keep)
        ),
    )
    log.info(
        "%d vectors of d=%d in %d file(s) -> %d pieces on %s (%d workers); %d held out"
        " (eval_holdout)",
        n,
        d,
        len(files),
        len(pieces),
        runner.name,
        runner.nb_workers,
        total - n,
    )
    kcfg = KMeansConfig(
        k=spec.nlist, niter=kmeans_niter, seed=seed, max_points_per_centroid=max_points_per_centroid
    )
    return Build(
        paths=paths,
        limits=limits,
        files=files,
        runner=runner,
        total=total,
        n=n,
        d=d,
        d_index=d_index,
        spec=spec,
        reasons=reasons,
        train_bytes=train_bytes,
        on_driver=on_driver,
        ctx=ctx,
        kcfg=kcfg,
        stages=stages,
    )
