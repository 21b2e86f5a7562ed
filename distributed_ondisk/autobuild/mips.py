"""Inner-product search on the L2 stages: each indexed row ``x`` gets one more
coordinate ``sqrt(M^2 - |x|^2)`` (``M`` the largest norm of the data) and each
query a 0 there, so that ``|q' - x'|^2 = |q|^2 + M^2 - 2 <q, x>``: the L2
ranking of the augmented vectors *is* the inner-product ranking, for any norms
(the reduction of Bachrach et al., RecSys 2014).  k-means, the trained index,
the slices and the shards all run unchanged on ``d + 1`` dimensions; the
search wrapper turns distances back into inner products.  On unit vectors the
extra coordinate is 0 and nothing changes but one dimension.

``index_path.parts/metric.json`` records the metric and ``M``; :func:`open_index`
reads it and returns the right searcher.  The faiss file at ``index_path``
appends the query's 0 coordinate itself (see ``faiss_files``), so plain faiss
ranks by inner product too, with distances ``|q|^2 + M^2 - 2 <q, x>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.workdir import Workdir

METRICS = ("l2", "ip")


def max_sq_norm(x: np.ndarray) -> float:
    """Largest squared norm of the rows (float64 accumulation), 0 for no rows."""
    if len(x) == 0:
        return 0.0
    return float(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())


def augment(x: np.ndarray, max_norm: float) -> np.ndarray:
    """Rows with the extra coordinate ``sqrt(max_norm^2 - |x|^2)`` (float32)."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    if len(sq) and sq.max() > max_norm * max_norm * (1 + 1e-6):
        raise InputError(
            f"a row has norm {np.sqrt(sq.max()):.6g}, over the indexed data's "
            f"largest norm {max_norm:.6g}"
        )
    out = np.empty((len(x), x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0))
    return out


def write_metric(wd: Workdir, metric_type: str, max_norm: float | None, d: int) -> None:
    doc = {"metric_type": metric_type, "d": d, "max_norm": max_norm}
    atomic_write_text(wd.metric, json.dumps(doc, indent=1) + "\n")


class InnerProductIndex:
    """An L2 index over augmented rows, searched by inner product: ``search`` takes
    queries of the original dimension and returns (inner products, ids), largest first."""

    metric_type = "ip"

    def __init__(self, l2_index: Any, max_norm: float) -> None:
        self.index = l2_index
        self.max_norm = float(max_norm)
        self.d = int(l2_index.d) - 1
        self.ntotal = l2_index.ntotal

    def __getattr__(self, name: str) -> Any:  # nlist, ranges_text, ... of the L2 index
        if name == "index":  # not set yet (copy, unpickling): no recursion through here
            raise AttributeError(name)
        return getattr(self.index, name)

    def search(self, x: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(x, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.d:
            raise InputError(f"queries must be (n, {self.d}), got shape {q.shape}")
        qa = np.zeros((len(q), self.d + 1), dtype=np.float32)
        qa[:, :-1] = q
        D, I = self.index.search(qa, k, **kw)
        qn = np.einsum("ij,ij->i", q, q, dtype=np.float64)[:, None]
        ip = ((qn + self.max_norm**2 - D) / 2).astype(np.float32)
        ip[I < 0] = -np.inf
        return ip, I


def parts_root(index_path: str | Path) -> Path:
    """The folder holding ``trained.index`` and ``hslices/`` of a build: ``index_path``'s
    ``.parts`` folder, or ``index_path`` itself when given that folder (or a folder
    written by older versions, which put everything at ``index_path``)."""
    from distributed_ondisk.autobuild.faiss_files import parts_dir

    p = Path(os.path.expanduser(os.fspath(index_path))).absolute()
    if p.is_dir() and Workdir(p).hslice_dir.is_dir():
        return p
    parts = parts_dir(p)
    if parts.is_dir():
        return parts
    raise IndexFileError(
        f"{p}: no index written by build_index here (no folder {parts} "
        "with trained.index and hslices/)"
    )


def open_index(index_path: str | Path) -> Any:
    """The index a ``build_index`` call wrote at ``index_path`` (all its shards, read-only):
    a CombinedIndex (L2) or an InnerProductIndex over it, as ``metric.json`` says.

    For "ip" this is the way to get inner products back: the faiss file at
    ``index_path`` ranks by inner product but returns augmented L2 distances."""
    from distributed_ondisk.search.combined import CombinedIndex

    wd = Workdir(parts_root(index_path))
    l2 = CombinedIndex(wd.hslice_dir, trained=wd.trained)
    meta = wd.metric
    if not meta.exists():
        return l2
    try:
        doc = json.loads(meta.read_text("utf-8"))
        metric = doc["metric_type"]
    except (OSError, ValueError, KeyError) as e:
        raise IndexFileError(f"{meta}: unreadable: {e}") from e
    if metric == "l2":
        return l2
    if metric == "ip":
        return InnerProductIndex(l2, float(doc["max_norm"]))
    raise IndexFileError(f"{meta}: unknown metric_type {metric!r}")
