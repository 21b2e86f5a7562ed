"""A read-only searchable view over a set of horizontal shards.

The view is the trained index (one copy of the transform and of the HNSW coarse
quantizer) whose inverted lists are replaced by a ``VStackInvertedLists`` of
``SliceInvertedLists``: list ``l`` is served straight from the one shard that
holds it, with no copy and no per-list merge (unlike an ``HStack`` that asks
every shard for every list).  A search server uses the same class over its
own subset of shards (``complete=False``): the lists it does not hold are
empty placeholders, and requests for them are refused rather than answered
with nothing.

Search is split in the two steps a distributed client runs on different
machines: ``coarse`` (transform + quantizer, done once per query on the
client) and ``search_preassigned`` (list scan, done where the lists are).
Per-call parameters travel in ``SearchParameters`` objects, so concurrent
searches with different ``nprobe``/``efSearch`` never share mutable state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import faiss
import numpy as np

from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.ondisk.hslice import check_trained, open_hslice, stack_hslices
from distributed_ondisk.search.shardset import (
    ShardMeta,
    check_coverage,
    expand_shard_args,
    find_trained_index,
    read_shard_meta,
)

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def _as_queries(x: np.ndarray, d: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise InputError(f"queries must be an (n, {d}) array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


class TrainedSearcher:
    """The client half: transform and coarse quantization of a trained index (no lists)."""

    def __init__(self, index: faiss.Index, fingerprint: str) -> None:
        self.index = index
        self.fingerprint = fingerprint
        self.ivf = faiss.extract_index_ivf(index)
        self.d = index.d
        self.nlist = int(self.ivf.nlist)
        self.metric_type = int(self.ivf.metric_type)
        self.quantizer = faiss.downcast_index(self.ivf.quantizer)
        self._hnsw = isinstance(self.quantizer, faiss.IndexHNSW)
        self.default_ef = int(self.quantizer.hnsw.efSearch) if self._hnsw else None

    @property
    def keep_max(self) -> bool:
        return self.metric_type == faiss.METRIC_INNER_PRODUCT

    def transform(self, x: np.ndarray, first_row: int = 0) -> np.ndarray:
        """Apply the pre-transforms so that each row's result depends only on the row
        (``first_row``: the position of ``x[0]`` in the whole batch).

        faiss's sgemm rounds differently with the batch size; the client cuts
        batches into chunks, so the row-exact transform of the build is what
        keeps its results bit-identical to an in-process search.
        """
        from distributed_ondisk.ondisk.transform import transform_rows

        return transform_rows(self.index, _as_queries(x, self.d), first_row)[1]

    def coarse(
        self, xt: np.ndarray, nprobe: int, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coarse distances and list ids ``(n, min(nprobe, nlist))`` of transformed queries."""
        if not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise InputError(f"nprobe must be a positive integer, got {nprobe!r}")
        nprobe = min(int(nprobe), self.nlist)
        params = None
        if ef_search is not None:
            if not self._hnsw:
                raise InputError("ef_search given but the coarse quantizer is not HNSW")
            if int(ef_search) < 1:
                raise InputError(f"ef_search must be >= 1, got {ef_search}")
            params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
        return self.quantizer.search(xt, nprobe, params=params)


class CombinedIndex(TrainedSearcher):
    """Shards opened read-only as one IVF index (``complete=True``) or as one server's part."""

    def __init__(
        self,
        shards: PathLike | Sequence[PathLike],
        *,
        trained: PathLike | None = None,
        complete: bool = True,
        checksums: bool = False,
    ) -> None:
        from distributed_ondisk.ondisk.trained import load_trained_index

        paths = expand_shard_args(shards)
        metas = [read_shard_meta(p, checksums=checksums) for p in paths]
        # an explicit --trained overrides the shards' record, but is checked against it
        self.trained_path = Path(trained) if trained is not None else find_trained_index(metas)
        index, file_fp = load_trained_index(self.trained_path)
        # the shards' identity of their trained index (what servers report to clients)
        fp = check_trained(
            index, file_fp, self.trained_path, [(m.path, m.trained_fingerprint) for m in metas]
        )
        super().__init__(index, fp)
        for m in metas:
            if m.nlist not in (None, self.nlist) or m.l1 > self.nlist:
                raise IndexFileError(
                    f"shard {m.path}: lists [{m.l0}, {m.l1}) of nlist {m.nlist} "
                    f"do not fit the trained index's nlist {self.nlist}"
                )
        check_coverage(
            [(m.label, m.l0, m.l1) for m in metas],
            self.nlist,
            complete=complete,
            splits=[m.part[1] for m in metas if m.part],
        )
        self.shards: list[ShardMeta] = sorted(metas, key=lambda m: m.l0)
        self.owned = np.zeros(self.nlist, dtype=bool)
        for m in self.shards:
            self.owned[m.l0 : m.l1] = True
        # the trained index searches the shards' lists in place (kept alive with it)
        self.ntotal = stack_hslices(self.index, [open_hslice(m.path) for m in self.shards])
        log.info(
            "opened %d shard(s), lists %s of %d, %d vectors, read-only",
            len(self.shards),
            self.ranges_text(),
            self.nlist,
            self.ntotal,
        )

    def ranges_text(self) -> str:
        return ", ".join(f"[{m.l0}, {m.l1})" for m in self.shards)

    def search_preassigned(
        self, xt: np.ndarray, k: int, Iq: np.ndarray, Dq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scan the given lists (``-1`` = skip) for transformed queries ``xt``.

        Refuses list ids this index does not hold: silently scanning an empty
        placeholder would return fewer results without saying so.
        """
        k = _check_k(k)
        xt = _as_queries(xt, self.d)
        n = xt.shape[0]
        Iq = np.ascontiguousarray(Iq, dtype=np.int64)
        Dq = np.ascontiguousarray(Dq, dtype=np.float32)
        if Iq.ndim != 2 or Iq.shape[0] != n or Dq.shape != Iq.shape:
            raise InputError(
                f"list ids {Iq.shape} / coarse distances {Dq.shape} do not match " f"{n} queries"
            )
        valid = Iq >= 0
        if (Iq >= self.nlist).any():
            raise InputError(f"list id {int(Iq.max())} out of range [0, {self.nlist})")
        if not self.owned[Iq[valid]].all():
            bad = int(Iq[valid][~self.owned[Iq[valid]]][0])
            raise InputError(f"list {bad} is not held here (lists {self.ranges_text()})")
        D = np.empty((n, k), dtype=np.float32)
        I = np.empty((n, k), dtype=np.int64)
        if n == 0:
            return D, I
        nprobe = Iq.shape[1]
        params = faiss.SearchParametersIVF(nprobe=nprobe, max_codes=0)
        self.ivf.search_preassigned_c(
            n,
            faiss.swig_ptr(xt),
            k,
            faiss.swig_ptr(Iq),
            faiss.swig_ptr(Dq),
            faiss.swig_ptr(D),
            faiss.swig_ptr(I),
            False,
            params,
        )
        return D, I

    def search(
        self, x: np.ndarray, k: int, *, nprobe: int, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of raw queries ``x``: distances and ids ``(n, k)``."""
        k = _check_k(k)
        xt = self.transform(x)
        Dq, Iq = self.coarse(xt, nprobe, ef_search)
        return self.search_preassigned(xt, k, Iq, Dq)

    def trained_bytes(self) -> bytes:
        """The trained index file, for clients that quantize on their side."""
        return self.trained_path.read_bytes()

    def to_ram(self) -> faiss.Index:
        """An independent in-RAM copy of the combined index (``ArrayInvertedLists``)."""
        if not self.owned.all():
            raise InputError("only a complete combined index can be copied to RAM")
        copy = faiss.deserialize_index(np.frombuffer(self.trained_bytes(), dtype=np.uint8))
        civf = faiss.extract_index_ivf(copy)
        src = self.ivf.invlists
        dst = civf.invlists
        for j in range(self.nlist):
            n = src.list_size(j)
            if n:
                dst.add_entries(j, n, src.get_ids(j), src.get_codes(j))
        civf.ntotal = copy.ntotal = self.ntotal
        return copy
