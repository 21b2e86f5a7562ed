"""``build_index``: embedding files in, on-disk sharded IVF index out, as autofaiss
users call it, locally or on Spark, through the project's own stages.

Stages (each timed into the infos JSON): list and probe the inputs (headers
only), plan the pieces, scan every piece (NaN, nulls, wrong lengths: refused
before any training), k-means on a seeded uniform sample of all rows, the
trained index, one vertical slice per piece, the id mapping, the merge into
``nb_indices_to_keep`` horizontal shards, the faiss index files, and the recall.

Every row is indexed.  The recall is measured on a seeded sample of indexed
rows (``eval_queries`` of them, exact ground truth over all rows: a query finds
itself at distance 0, as autofaiss measures); ``eval_holdout=True`` instead
holds the last ``eval_queries`` rows out of the index and queries with them.

With ``metric_type="ip"`` every row gets one more coordinate so that the L2
stages rank by inner product (:mod:`distributed_ondisk.autobuild.mips`).

Output layout (see :mod:`distributed_ondisk.autobuild.faiss_files` for how faiss
opens the files; ``open_index(index_path)`` opens all of it)::

    index_path                          faiss index file (``faiss.read_index``); with
                                        nb_indices_to_keep=N>1: index_path1..index_pathN
    index_path.ivfdata                  its on-disk lists (index_pathJ.ivfdata)
    index_path.parts/metric.json        metric_type, d, largest norm (for "ip")
    index_path.parts/trained.index      (+ manifest) transform + HNSW quantizer + encoder
    index_path.parts/centroids.npy
    index_path.parts/hslices/hslice_J_of_M.index (+ manifest), lists: the .ivfdata files
    index_path.parts/ids/ids_P_of_N.parquet   id_columns + "i" (the index id), per piece
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.autobuild import tasks
from distributed_ondisk.autobuild.evaluation import choose_queries, measure_recall
from distributed_ondisk.autobuild.faiss_files import (
    check_index_path,
    data_file,
    index_files,
    parts_dir,
    write_faiss_indexes,
)
from distributed_ondisk.autobuild.index_key import (
    choose_index_key,
    estimate_index_bytes,
    parse_memory,
)
from distributed_ondisk.autobuild.inputs import list_embedding_files, probe_files
from distributed_ondisk.autobuild.mips import METRICS, augment, open_index, write_metric
from distributed_ondisk.autobuild.plan import (
    holdout_rows,
    plan_pieces,
    rows_by_piece,
    rows_per_piece_for,
)
from distributed_ondisk.autobuild.training import PlannedDataset
from distributed_ondisk.errors import InputError

log = logging.getLogger(__name__)
ROW_WORKING_BYTES = 28  # per training row: label int64, distance, one-hot sparse entry


def _local_dir(path: str | os.PathLike, what: str) -> Path:
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise InputError(
            f"{what} {text!r}: must be a local (or shared, mounted) path: the "
            "on-disk shards are memory-mapped; only the embeddings may be URLs"
        )
    return Path(os.path.expanduser(text)).absolute()


def _runner(distributed: str | None, nb_cores: int | None) -> Any:
    if distributed is None:
        from distributed_ondisk.autobuild.local import LocalRunner

        return LocalRunner(nb_cores or os.cpu_count() or 1)
    if distributed == "pyspark":
        from distributed_ondisk.autobuild.pyspark import SparkRunner

        return SparkRunner()
    raise InputError(f"distributed={distributed!r}: expected None or 'pyspark'")


def kmeans_rows_hint(n: int, cfg: Any, on_driver: bool) -> np.ndarray:
    """The global rows ``train_kmeans`` will ask for (its fingerprint rows, and its seeded
    sample when k-means runs on the driver), so the scan brings them back.  Only a
    hint: rows it misses are read by tasks later."""
    from distributed_ondisk.kmeans.loop import fingerprint_rows, sample_rows, seeded_rng

    rows = fingerprint_rows(n)
    if on_driver:
        sample = sample_rows(n, cfg, seeded_rng(cfg))
        rows = np.arange(n, dtype=np.int64) if sample is None else np.union1d(rows, sample)
    return np.unique(rows)


def kmeans_placement(
    n_train: int, d: int, k: int, memory: int, nb_workers: int, local: bool
) -> tuple[int, bool]:
    """(bytes k-means needs in one process, whether it runs on the driver).

    On the driver it holds the sample and the assignment's working memory
    (labels, distances, the one-hot sums, faiss's distance tiles); autofaiss
    trains there too, and a Spark job per iteration costs more than the
    assignment of any sample that fits.  Otherwise (Spark only) each worker
    holds its share of the blocks plus the same working memory.
    """
    tiles = 4 * 4096 * min(k, 1024)  # faiss's blas distance tile (4096 x 1024 floats)
    driver = n_train * (4 * d + ROW_WORKING_BYTES) + tiles
    if local or driver <= memory // 2:
        need, on_driver = driver, True
    else:
        need = -(-n_train // nb_workers) * (4 * d + ROW_WORKING_BYTES) + tiles
        on_driver = False
    log.info(
        "k-means on %d rows of d=%d: %s, about %.0f MiB per process (half of "
        "current_memory_available: %.0f MiB)",
        n_train,
        d,
        "on the driver" if on_driver else f"over {nb_workers} workers",
        need / 2**20,
        memory / 2**21,
    )
    if need > memory // 2:
        raise InputError(
            f"k-means on {n_train} rows of d={d} needs about "
            f"{need / 2**20:.0f} MiB {'on the driver' if on_driver else 'per worker'}"
            f", over half of current_memory_available ({memory / 2**20:.0f} MiB): "
            "lower max_points_per_centroid or raise the memory"
        )
    return need, on_driver


def _key_for(index_key: str | None, d: int, d_index: int) -> str | None:
    """A user's key names the data's d (``RR64``); with "ip" the stages work in d + 1."""
    if not index_key or d == d_index:
        return index_key
    return re.sub(rf"\b(RR|PCA){d},", rf"\g<1>{d_index},", index_key)


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        log.info("stage %s", name)
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        log.info("stage %s done in %.2f s", name, self.seconds[name])
        return out


def build_index(
    embeddings: str | Sequence[str],
    index_path: str = "knn_index",
    index_infos_path: str = "index_infos.json",
    *,
    file_format: str = "npy",
    embedding_column_name: str = "embeddings",
    id_columns: Sequence[str] | None = None,
    index_key: str | None = None,
    max_index_memory_usage: str = "16G",
    current_memory_available: str = "32G",
    temporary_indices_folder: str | None = None,
    nb_indices_to_keep: int = 1,
    distributed: str | None = None,
    metric_type: str = "l2",
    nb_cores: int | None = None,
    seed: int = 1234,
    kmeans_niter: int = 10,
    max_points_per_centroid: int = 256,
    eval_queries: int = 1000,
    eval_holdout: bool = False,
    keep_temporary: bool = False,
    _fault: Callable[[str, int], None] | None = None,
) -> tuple[Any, dict]:
    """Build the index of every row; returns ``(index opened read-only, infos dict)``:
    a ``CombinedIndex`` for "l2", an ``InnerProductIndex`` over one for "ip" (reopen
    either with :func:`distributed_ondisk.open_index`).

    ``index_path`` is a faiss index file (``index_path1..N`` when
    ``nb_indices_to_keep`` is N > 1): ``faiss.read_index(index_path)`` opens it,
    ``faiss.IO_FLAG_ONDISK_SAME_DIR`` once moved; never ``IO_FLAG_MMAP`` (faiss then
    leaves the on-disk lists unmapped and the search crashes).  For "ip", plain faiss
    ranks by inner product but returns the augmented L2 distances
    ``|q|^2 + max_norm^2 - 2 <q, x>``; ``open_index`` returns inner products.

    ``eval_queries`` rows are the recall's queries: a seeded sample of the indexed
    rows (default), or with ``eval_holdout=True`` the last rows, held out of the index.
    """
    from distributed_ondisk.kmeans.loop import KMeansConfig, train_kmeans
    from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
    from distributed_ondisk.vectors import write_vectors
    from distributed_ondisk.workdir import Workdir

    if distributed == "pyspark":
        from distributed_ondisk.extras import require

        require("spark", "distributed='pyspark'")
    if metric_type not in METRICS:
        raise InputError(f"metric_type {metric_type!r}: expected one of {', '.join(METRICS)}")
    if not isinstance(nb_indices_to_keep, int) or nb_indices_to_keep < 1:
        raise InputError(f"nb_indices_to_keep must be an integer >= 1, got {nb_indices_to_keep!r}")
    budget = parse_memory(max_index_memory_usage)
    memory = parse_memory(current_memory_available)
    if not isinstance(eval_queries, int) or eval_queries < 0:
        raise InputError(f"eval_queries must be an integer >= 0, got {eval_queries!r}")
    out_path = _local_dir(index_path, "index_path")
    check_index_path(out_path, nb_indices_to_keep)
    index_dir = parts_dir(out_path)
    temp_dir = _local_dir(temporary_indices_folder or f"{out_path}_tmp", "temporary_indices_folder")
    infos_path = _local_dir(index_infos_path, "index_infos_path")
    stages = _Stages()

    def probe() -> list:
        return probe_files(
            list_embedding_files(embeddings, file_format),
            file_format,
            embedding_column_name,
            id_columns,
        )

    files = stages.run("probe_inputs", probe)
    total, d = sum(f.rows for f in files), next(f.d for f in files if f.rows)
    n = holdout_rows(total, eval_queries)[0] if eval_holdout else total
    # "ip": the stages see one more coordinate per row (see mips.py)
    d_index = d + 1 if metric_type == "ip" else d
    spec, reasons = choose_index_key(n, d_index, budget, _key_for(index_key, d, d_index))
    for line in reasons:
        log.info("index key: %s", line)
    if nb_indices_to_keep > spec.nlist:
        raise InputError(
            f"nb_indices_to_keep={nb_indices_to_keep} is more than nlist="
            f"{spec.nlist}: a shard holds at least one list"
        )
    n_train = min(n, spec.nlist * max_points_per_centroid)
    runner = _runner(distributed, nb_cores)
    train_bytes, on_driver = kmeans_placement(
        n_train, d_index, spec.nlist, memory, runner.nb_workers, distributed is None
    )
    pieces = plan_pieces(
        [f.rows for f in files], rows_per_piece_for(n, d, runner.nb_workers, memory), limit=n
    )
    ctx = tasks.BuildContext(
        tuple(files),
        tuple(pieces),
        os.fspath(index_dir),
        os.fspath(temp_dir),
        nb_indices_to_keep,
        tuple(id_columns or ()),
        runner.task_threads,
        _fault,
        metric_type,
        lists_files=tuple(
            os.fspath(data_file(p)) for p in index_files(out_path, nb_indices_to_keep)
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
    wanted = kmeans_rows_hint(n, kcfg, on_driver)
    groups = dict(rows_by_piece(wanted, pieces))
    scanned = stages.run(
        "scan_inputs",
        lambda: runner.map(
            functools.partial(tasks.scan_piece_keeping, ctx),
            [(i, groups.get(i)) for i in range(len(pieces))],
            desc="scan",
        ),
    )
    kept = [x for x, _ in scanned if x is not None]
    max_norm = None
    if metric_type == "ip":
        max_norm = float(np.sqrt(max(sq for _, sq in scanned)))
        ctx = dataclasses.replace(ctx, max_norm=max_norm)
        kept = [augment(x, max_norm) for x in kept]
        log.info("metric ip: rows augmented to d=%d (largest norm %.6g)", d_index, max_norm)
    del scanned
    queries, query_source = choose_queries(
        runner, ctx, files, n, total, eval_queries, seed, eval_holdout
    )
    wd = Workdir.from_arg(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    temp_dir.mkdir(parents=True, exist_ok=True)
    data = PlannedDataset(runner, ctx, n, d_index, on_driver=on_driver)
    data.prefetched(wanted, np.concatenate(kept))
    del kept
    try:
        km = stages.run("kmeans", lambda: train_kmeans(data, kcfg))
        write_vectors(wd.centroids, km.centroids)
        train_path = temp_dir / "train.npy"
        write_vectors(train_path, data.training_rows())
    finally:
        data.close()
    cfg = TrainedIndexConfig(
        encoder=spec.cfg.encoder, rotation=spec.cfg.rotation, hnsw_m=spec.cfg.hnsw_m, seed=seed
    )
    stages.run(
        "trained_index",
        lambda: make_trained_index(wd.centroids, train_path, wd.trained, cfg, force=True),
    )
    vslices = stages.run(
        "vslices",
        lambda: runner.map(
            functools.partial(tasks.build_vslice, ctx), range(len(pieces)), desc="vslices"
        ),
    )
    if id_columns:
        stages.run(
            "ids",
            lambda: runner.map(
                functools.partial(tasks.write_ids, ctx), range(len(pieces)), desc="ids"
            ),
        )
    tasks.check_vslice_set(ctx, n)
    shards = stages.run(
        "merge",
        lambda: runner.map(
            functools.partial(tasks.merge_shard, ctx), range(nb_indices_to_keep), desc="merge"
        ),
    )
    faiss_files = stages.run(
        "faiss_files",
        lambda: write_faiss_indexes(
            wd.trained,
            [wd.hslice(j, nb_indices_to_keep) for j in range(nb_indices_to_keep)],
            out_path,
            d if metric_type == "ip" else None,
        ),
    )
    write_metric(index_dir, metric_type, max_norm, d)
    index = open_index(index_dir)
    if index.ntotal != n or sum(f["vectors"] for f in faiss_files) != n:
        raise RuntimeError(f"internal: the shards hold {index.ntotal} vectors, expected {n}")
    recall = stages.run(
        "evaluate", lambda: measure_recall(index, runner, ctx, queries, spec.nlist, query_source)
    )
    if not keep_temporary:
        for i in range(len(pieces)):
            for p in (ctx.vslice_path(i), Workdir.manifest(ctx.vslice_path(i))):
                p.unlink(missing_ok=True)
        train_path.unlink(missing_ok=True)
        shutil.rmtree(temp_dir / "vslices", ignore_errors=True)
        if temporary_indices_folder is None:
            with contextlib.suppress(OSError):  # ours, and empty unless other files
                temp_dir.rmdir()
    est = estimate_index_bytes(n, d_index, spec)
    infos = {
        "index_key": spec.key(d_index),
        "index_key_reasoning": reasons,
        "index_path": str(out_path),
        "index_files": faiss_files,
        "parts_path": str(index_dir),
        "metric_type": metric_type,
        "max_norm": max_norm,
        "distributed": runner.name,
        "workers": runner.nb_workers,
        "nb_vectors": n,
        "nb_input_rows": total,
        "queries": query_source,
        "d": d,
        "index_d": d_index,
        "nb_files": len(files),
        "nb_pieces": len(pieces),
        "nb_indices": nb_indices_to_keep,
        "nlist": spec.nlist,
        "seed": seed,
        "kmeans": {
            "n_train": km.n_train,
            "niter": kmeans_niter,
            "objective": km.objective,
            "placement": "driver" if on_driver else "distributed",
        },
        "size_bytes": {
            "vslices": sum(v["bytes"] for v in vslices),
            "hslices": sum(s["bytes"] for s in shards),
            "trained_index": wd.trained.stat().st_size,
        },
        "memory_estimates_bytes": {
            "index": est,
            "kmeans_training": train_bytes,
            "max_index_memory_usage": budget,
            "current_memory_available": memory,
        },
        "timings_s": stages.seconds,
        "total_s": round(sum(stages.seconds.values()), 3),
        "recall": recall,
        "id_columns": list(id_columns or []),
    }
    infos_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(infos_path, json.dumps(infos, indent=1) + "\n")
    log.info(
        "index %s (%s, %d vectors) in %.1f s; infos in %s",
        out_path,
        infos["index_key"],
        n,
        infos["total_s"],
        infos_path,
    )
    return index, infos
