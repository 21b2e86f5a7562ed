"""The ``distributed="pyspark"`` runner: each task is one Spark task.

``map`` runs one partition per item (pieces and shards are planned so that
one is one task's worth); ``scatter_read`` has the executors read the
k-means training blocks and keep them cached (when the sample does not fit on
the driver), so an iteration ships only the centroids (a broadcast) and
brings back one reduced ``AssignResult`` (O(k*d)) per block, summed on the
driver in block order.  Results come back in partition order,
whatever the executors' scheduling, so the sums are those of the local run.
The launcher's Spark backend (:mod:`distributed_ondisk.launch.spark`) runs the
pipeline's command-line tasks through this same ``map``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from distributed_ondisk.errors import ClusterError, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def active_session() -> Any:
    """The active SparkSession, or a new one from the defaults (as autofaiss does)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise InputError(
            "distributed='pyspark' needs pyspark: pip install " "'distributed_ondisk[spark]'"
        ) from e
    session = SparkSession.getActiveSession()
    if session is None:
        log.warning("no active SparkSession: creating one with the default configuration")
        session = SparkSession.builder.appName("distributed_ondisk build_index").getOrCreate()
    return session


class SparkRunner:
    name = "pyspark"

    def __init__(self, session: Any | None = None) -> None:
        self.session = session or active_session()
        self.sc = self.session.sparkContext
        self.nb_workers = max(1, int(self.sc.defaultParallelism))
        # faiss threads per task: the cores Spark gives a task (one by default)
        self.task_threads = int(self.sc.getConf().get("spark.task.cpus", "1"))

    def _collect(self, rdd: Any, desc: str) -> list:
        self.sc.setJobDescription(desc)
        try:
            return rdd.collect()
        except Exception as e:  # Py4JJavaError: the task's own error is in its text
            inner = _task_error(e)
            if inner is not None:
                raise inner from e
            raise ClusterError(f"Spark job '{desc}' failed: {str(e).splitlines()[0]}") from e

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "tasks") -> list[R]:
        if not items:
            return []
        rdd = self.sc.parallelize(list(items), len(items)).map(fn)
        return self._collect(rdd, desc)

    def scatter(self, blocks: Sequence[Any]) -> Any:
        # one partition per worker (several blocks each): an iteration is one wave of tasks
        nparts = max(1, min(len(blocks), self.nb_workers))
        rdd = self.sc.parallelize(list(blocks), nparts).cache()
        rdd.count()
        return rdd

    def scatter_read(self, fn: Callable[[T], Any], items: Sequence[T]) -> Any:
        """Blocks read by the executors themselves (``fn(item)``) and cached there: the
        rows never pass through the driver."""
        nparts = max(1, min(len(items), self.nb_workers))
        rdd = self.sc.parallelize(list(items), nparts).map(fn).cache()
        self._collect(rdd.map(len), "read k-means blocks")
        return rdd

    def map_scattered(self, fn: Callable[[Any, Any], R], handle: Any, arg: Any) -> list[R]:
        bc = self.sc.broadcast(arg)
        try:
            return self._collect(handle.map(lambda b: fn(b, bc.value)), "k-means iteration")
        finally:
            bc.unpersist()

    def release(self, handle: Any) -> None:
        handle.unpersist()


def _task_error(e: Exception) -> Exception | None:
    """Our own error raised in a task, rebuilt from the Java exception's text so the
    caller sees the same clear message as in a local run."""
    from distributed_ondisk import errors

    text = str(e)
    for name in ("InputError", "VectorFileError", "IndexFileError"):
        marker = f"distributed_ondisk.errors.{name}: "
        if marker in text:
            msg = text.split(marker, 1)[1].splitlines()[0]
            return getattr(errors, name)(msg)
    return None
