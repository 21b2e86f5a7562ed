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
    index_path.parts/hslices/hslice_JJJJ_of_MMMM.index (+ manifest), lists: the .ivfdata files
    index_path.parts/ids/ids_PPPP_of_NNNN.parquet   id_columns + "i" (the index id), per piece
    index_path_tmp/  (temporary_indices_folder)    vslices and the encoder's rows, removed

Every name under the two folders comes from :class:`~distributed_ondisk.workdir.Workdir`;
the names beside ``index_path`` from :mod:`~distributed_ondisk.autobuild.faiss_files`.
The arguments are checked in :mod:`~distributed_ondisk.autobuild.options` and the
steps run by :mod:`~distributed_ondisk.autobuild.steps`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.autobuild.evaluation import choose_queries, measure_recall
from distributed_ondisk.autobuild.index_key import estimate_index_bytes
from distributed_ondisk.autobuild.inputs import list_embedding_files, probe_files
from distributed_ondisk.autobuild.mips import open_index
from distributed_ondisk.autobuild.options import build_paths, check_options
from distributed_ondisk.autobuild.placement import kmeans_rows_hint
from distributed_ondisk.autobuild.steps import Build, Stages, plan_build
from distributed_ondisk.kmeans.loop import KMeansResult

log = logging.getLogger(__name__)


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
    limits = check_options(
        distributed=distributed,
        metric_type=metric_type,
        nb_indices_to_keep=nb_indices_to_keep,
        max_index_memory_usage=max_index_memory_usage,
        current_memory_available=current_memory_available,
        eval_queries=eval_queries,
    )
    paths = build_paths(index_path, index_infos_path, temporary_indices_folder, nb_indices_to_keep)
    stages = Stages()

    def probe() -> list:
        return probe_files(
            list_embedding_files(embeddings, file_format),
            file_format,
            embedding_column_name,
            id_columns,
        )

    b = plan_build(
        stages.run("probe_inputs", probe),
        paths,
        limits,
        stages,
        distributed=distributed,
        nb_cores=nb_cores,
        metric_type=metric_type,
        index_key=index_key,
        nb_indices_to_keep=nb_indices_to_keep,
        id_columns=id_columns,
        kmeans_niter=kmeans_niter,
        max_points_per_centroid=max_points_per_centroid,
        seed=seed,
        eval_queries=eval_queries,
        eval_holdout=eval_holdout,
        fault=_fault,
    )
    b.scan(kmeans_rows_hint(b.n, b.kcfg, b.on_driver))
    queries, query_source = choose_queries(
        b.runner, b.ctx, b.files, b.n, b.total, eval_queries, seed, eval_holdout
    )
    km = b.kmeans()
    b.trained_index(seed)
    vslices, shards, faiss_files = b.shards(bool(id_columns))
    index = open_index(paths.parts)
    if index.ntotal != b.n or sum(f["vectors"] for f in faiss_files) != b.n:
        raise RuntimeError(f"the shards hold {index.ntotal} vectors, expected {b.n}")
    recall = stages.run(
        "evaluate",
        lambda: measure_recall(index, b.runner, b.ctx, queries, b.spec.nlist, query_source),
    )
    if not keep_temporary:
        b.remove_temporaries()
    infos = _infos(b, km, vslices, shards, faiss_files, recall, query_source, seed, kmeans_niter)
    paths.infos.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.infos, json.dumps(infos, indent=1) + "\n")
    log.info(
        "index %s (%s, %d vectors) in %.1f s; infos in %s",
        paths.index_path,
        infos["index_key"],
        b.n,
        infos["total_s"],
        paths.infos,
    )
    return index, infos


def _infos(
    b: Build,
    km: KMeansResult,
    vslices: list[dict],
    shards: list[dict],
    faiss_files: list[dict],
    recall: Any,
    query_source: str,
    seed: int,
    kmeans_niter: int,
) -> dict[str, Any]:
    """The infos JSON (``index_infos_path``): what was built, from what, how long it took."""
    est = estimate_index_bytes(b.n, b.d_index, b.spec)
    return {
        "index_key": b.spec.key(b.d_index),
        "index_key_reasoning": b.reasons,
        "index_path": str(b.paths.index_path),
        "index_files": faiss_files,
        "parts_path": str(b.paths.parts),
        "metric_type": b.ctx.metric_type,
        "max_norm": b.max_norm,
        "distributed": b.runner.name,
        "workers": b.runner.nb_workers,
        "nb_vectors": b.n,
        "nb_input_rows": b.total,
        "queries": query_source,
        "d": b.d,
        "index_d": b.d_index,
        "nb_files": len(b.files),
        "nb_pieces": len(b.ctx.pieces),
        "nb_indices": b.nb_shards,
        "nlist": b.spec.nlist,
        "seed": seed,
        "kmeans": {
            "n_train": km.n_train,
            "niter": kmeans_niter,
            "objective": km.objective,
            "placement": "driver" if b.on_driver else "distributed",
        },
        "size_bytes": {
            "vslices": sum(v["bytes"] for v in vslices),
            "hslices": sum(s["bytes"] for s in shards),
            "trained_index": b.paths.parts_wd.trained.stat().st_size,
        },
        "memory_estimates_bytes": {
            "index": est,
            "kmeans_training": b.train_bytes,
            "max_index_memory_usage": b.limits.budget,
            "current_memory_available": b.limits.memory,
        },
        "timings_s": b.stages.seconds,
        "total_s": round(sum(b.stages.seconds.values()), 3),
        "recall": recall,
        "id_columns": list(b.ctx.id_columns),
    }
