"""The ``distributed=None`` runner: tasks run one after the other in this process.

faiss already uses every core inside a task (assignment, IVF add), and the
merge is I/O bound, so running pieces one at a time keeps the memory of one
piece and gives the same results as any parallel runner: the same task
functions run on the same plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from distributed_ondisk.log import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class LocalRunner:
    name = "local"

    def __init__(self, nb_workers: int = 1) -> None:
        self.nb_workers = max(1, int(nb_workers))
        self.task_threads = 0  # faiss's default: all cores

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "tasks") -> list[R]:
        out = []
        with Progress(len(items), desc, unit="task", logger=log) as prog:
            for it in items:
                out.append(fn(it))
                prog.update(1)
        return out

    def scatter(self, blocks: Sequence[Any]) -> Any:
        return list(blocks)

    def scatter_read(self, fn: Callable[[T], Any], items: Sequence[T]) -> Any:
        return [fn(it) for it in items]

    def map_scattered(self, fn: Callable[[Any, Any], R], handle: Any, arg: Any) -> list[R]:
        return [fn(b, arg) for b in handle]

    def release(self, handle: Any) -> None:
        del handle
