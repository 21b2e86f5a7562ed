"""Exact accelerated assignment: Yinyang-style bounds kept by the dataset across iterations.

Lloyd's assignment computes every (row, centroid) distance each iteration.  Most
rows keep their centroid from one iteration to the next, and the triangle
inequality proves it cheaply (Ding et al., "Yinyang K-means", ICML 2015):

* the centroids are split once into ``G`` groups (a few Lloyd steps over the
  centroids themselves, so a group is a compact region);
* each row keeps its centroid ``a`` and, per group ``g``, a lower bound
  ``lb[g]`` on its distance to every centroid of ``g`` but ``a``;
* when the centroids move, the dataset computes each centroid's drift
  ``|c_new - c_old|`` itself (it kept the previous centroids) and lowers
  ``lb[g]`` by the largest drift in ``g``;
* the distance to the row's own centroid is computed exactly (d flops per row,
  k times fewer than the full row), and when it is below every ``lb[g]`` no
  other centroid can be nearer: the row keeps ``a``;
* the other rows are recomputed against all centroids in one matrix product per
  block (BLAS sgemm), which also gives them fresh bounds.

Exactness against float32 Lloyd: the bounds are safe for the *exact* distances
and the test keeps a margin larger than the worst-case rounding error of the
float32 ``|x|^2 - 2 x.c + |c|^2`` that Lloyd's search computes (``FLOAT_SLACK``),
so a row the test keeps is one whose Lloyd assignment (faiss or BLAS) is the
same; a recomputed row can only differ from Lloyd's on a float tie.  Sums,
counts and the objective are those of the final assignment, summed as the
Lloyd path sums them.

The bounds are a cache: any call with any centroids is answered exactly (the
drift is taken from the centroids of the previous call, whatever they were), a
new view (``select``) or another ``k`` drops them, and the first call after that
is a full assignment.  numpy/scipy only.

Why one module of ~400 lines: the bounds' state, their update from the drift, the
keep test with its float slack and the recomputation share one set of arrays whose
invariants hold only together; split apart, each piece would have to re-prove them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from distributed_ondisk.kmeans.base import AssignResult

log = logging.getLogger(__name__)

#: Default memory for the per-row bounds of one dataset: 5M rows get ~100 groups.
DEFAULT_BOUND_BYTES = 2 << 30
#: Yinyang's choice: about k/10 groups; more groups cost more per row than they save.
CENTROIDS_PER_GROUP = 10
MAX_GROUPS = 256
#: Bytes of one (rows x k) distance block: small enough to stay in cache between
#: the product and the min/argmin passes over it.
DIST_BLOCK_BYTES = 4 << 20
#: Rows tested at once: their bounds (TEST_ROWS x groups float32) stay in cache.
TEST_ROWS = 2048
#: Rows handed to Lloyd's search at once to settle near-ties (faiss's BLAS path).
TIE_MIN_ROWS = 32
#: 1/this of the centroids, those that moved most, are checked against every row.
FAR_FRACTION = 64
#: Lloyd steps that group the centroids (any grouping is exact; compact ones prune more).
GROUPING_ITERS = 5
#: What an accelerated run costs compared with Lloyd's, for the plan's model, measured
#: by benchmarks/bench_kmeans.py (1M x 96, k = 4096, 20 iterations, 2 servers x 1
#: thread): the mean fraction of rows recomputed per iteration, what recomputing a
#: row costs relative to Lloyd's search of it (sgemm + group minima vs faiss.knn),
#: and the floor of an iteration where the bounds keep every row.  One run, 2 shared
#: cores at load ~3.5: 0.41 of the rows recomputed on average; the servers' CPU time
#: 0.69x Lloyd's (142.7 vs 206.4 s), what work_fraction(0.41) gives, but the wall
#: time 1.04x (the loaded cores: not yet a wall-clock gain there).
MEASURED_RECOMPUTED_FRACTION = 0.41
RECOMPUTE_COST = 1.4
KEPT_ROW_COST = 0.1


def work_fraction(recomputed: float = MEASURED_RECOMPUTED_FRACTION) -> float:
    """An accelerated iteration's time over a Lloyd iteration's, on average."""
    return min(RECOMPUTE_COST, recomputed * RECOMPUTE_COST + KEPT_ROW_COST)


#: Unit roundoff of float32.
U32 = 2.0**-24


def float_slack(d: int) -> float:
    """Relative worst-case error of a float32 ``|x|^2 + |c|^2 - 2 x.c`` (Higham's gamma_n
    for the dot products, plus the three additions), in units of ``|x|^2 + |c|^2``."""
    return (2 * d + 8) * U32


def n_groups(k: int, n: int, bound_bytes: int) -> tuple[int, int]:
    """(groups, centroids per group) for ``n`` rows: about k/10 groups, at most what
    ``bound_bytes`` holds (float32 per row and group), groups of equal size."""
    fit = max(1, min(MAX_GROUPS, bound_bytes // max(4 * n, 1)))
    m = max(CENTROIDS_PER_GROUP, -(-k // fit))
    m = min(m, k)
    return -(-k // m), m


def group_centroids(c: np.ndarray, g: int, seed: int = 0) -> np.ndarray:
    """Group id (0..g-1) of every centroid, ``ceil(k/g)`` at most per group: a few Lloyd
    steps over the centroids, then a greedy balanced assignment (nearest pairs first).

    Equal sizes let a (rows, k) distance block be reduced per group by a reshape
    (5x faster than ``np.minimum.reduceat``); any grouping is exact, compact ones prune
    more.
    """
    k = len(c)
    if g <= 1:
        return np.zeros(k, np.int64)
    rng = np.random.default_rng(seed)
    cc = c.astype(np.float32)
    cn = (cc * cc).sum(1)
    centers = cc[rng.choice(k, g, replace=False)].copy()
    for it in range(GROUPING_ITERS + 1):
        d2 = cn[:, None] - 2 * cc @ centers.T + (centers * centers).sum(1)[None, :]
        if it == GROUPING_ITERS:
            break
        labels = d2.argmin(1)
        counts = np.bincount(labels, minlength=g)
        sums = np.zeros((g, c.shape[1]), np.float64)
        np.add.at(sums, labels, cc)
        keep = counts > 0  # an empty group keeps its center
        centers[keep] = (sums[keep] / counts[keep, None]).astype(np.float32)
    cap = -(-k // g)
    labels = np.full(k, -1, np.int64)
    room = np.full(g, cap, np.int64)
    pairs = np.argsort(d2, axis=None, kind="stable")
    # one pass over the (centroid, group) pairs, nearest first; vectorised in rounds
    while (labels < 0).any():
        ci, gi = np.unravel_index(pairs, d2.shape)
        ok = (labels[ci] < 0) & (room[gi] > 0)
        ci, gi = ci[ok], gi[ok]
        # first pair of each centroid, then at most `room` centroids per group this round
        _, first = np.unique(ci, return_index=True)
        first.sort()
        ci, gi = ci[first], gi[first]
        rank = np.zeros(len(gi), np.int64)
        o = np.argsort(gi, kind="stable")
        gs = gi[o]
        pos = np.arange(len(gs)) - np.searchsorted(gs, gs)
        rank[o] = pos
        take = rank < room[gi]
        labels[ci[take]] = gi[take]
        room -= np.bincount(gi[take], minlength=g)
        pairs = pairs[ok]
    return labels


class BoundedAssigner:
    """The bounds of one view's rows and the centroids they refer to.

    ``assign(blocks, centroids, weights, sums_of)`` where ``blocks`` yields (first row,
    float32 block) over the whole view in order, as ``LocalView.blocks`` does, and
    ``sums_of(ids, x, k, w)`` is the Lloyd path's per-block sums, ``search(x)`` its
    nearest-centroid search (D, I), which settles near-ties.  One call at a time
    (a lock): the bounds are one state.
    """

    def __init__(self, n: int, d: int, bound_bytes: int = DEFAULT_BOUND_BYTES) -> None:
        self.n, self.d = int(n), int(d)
        self.bound_bytes = int(bound_bytes)
        self.lock = threading.Lock()
        self.reset()
        # what the last call did, for the log, the benchmark and the plan's model
        self.last_recomputed = 0
        self.last_full = True

    def reset(self) -> None:
        self.prev: np.ndarray | None = None  # float64 (k, d) centroids of the previous call
        self.assign_ids: np.ndarray | None = None  # int64 (n,)
        self.lb: np.ndarray | None = None  # float32 (n, G)
        self.groups: np.ndarray | None = None  # group of each centroid
        self.cols: np.ndarray | None = None  # centroid of column slot*G + g (-1: padding)
        self.xmax = 0.0  # largest |x| of the view (bounds the bounds' rounding)
        self._search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def _setup(self, c: np.ndarray) -> bool:
        """Prepare for centroids ``c``; True when the bounds can be used (else full pass)."""
        k = len(c)
        if self.prev is not None and self.prev.shape == c.shape:
            return True
        g, m = n_groups(k, self.n, self.bound_bytes)
        self.groups = group_centroids(c, g)
        slot = np.empty(k, np.int64)
        order = np.argsort(self.groups, kind="stable")
        gs = self.groups[order]
        slot[order] = np.arange(k) - np.searchsorted(gs, gs)
        self.cols = np.full(g * m, -1, np.int64)
        self.cols[slot * g + self.groups] = np.arange(k)
        self.lb = np.empty((self.n, g), np.float32)
        self.assign_ids = np.empty(self.n, np.int64)
        log.info("k-means bounds: %d rows x %d groups of %d centroids", self.n, g, m)
        return False

    def assign(
        self,
        blocks: Iterator[tuple[int, np.ndarray]],
        centroids: np.ndarray,
        weights: np.ndarray | None,
        sums_of: Callable[..., np.ndarray],
        search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> AssignResult:
        with self.lock:
            try:
                return self._assign(blocks, centroids, weights, sums_of, search)
            except BaseException:
                self.reset()  # bounds half updated are no bounds: next call is a full pass
                raise

    def _assign(
        self,
        blocks: Iterator[tuple[int, np.ndarray]],
        centroids: np.ndarray,
        weights: np.ndarray | None,
        sums_of: Callable[..., np.ndarray],
        search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
    ) -> AssignResult:
        t0 = time.perf_counter()
        self._search = search
        c = np.ascontiguousarray(centroids, np.float32)
        k = len(c)
        use_bounds = self._setup(c)
        assert self.lb is not None and self.assign_ids is not None
        assert self.groups is not None and self.cols is not None
        g = self.lb.shape[1]
        cn = (c.astype(np.float64) ** 2).sum(1)
        pad = self.cols < 0
        ccols = c[np.where(pad, 0, self.cols)]
        ccols[pad] = 0
        cn_cols = np.where(pad, np.inf, cn[self.cols]).astype(np.float32)
        c2t = np.ascontiguousarray(-2.0 * ccols.T, dtype=np.float32)
        slack = float_slack(self.d)
        cmax2 = float(cn.max())
        if use_bounds:
            assert self.prev is not None
            drift = np.sqrt(((c.astype(np.float64) - self.prev) ** 2).sum(1))
            # The few centroids that moved most (splits of empty clusters, early
            # iterations) are tested against every row directly: in a group's maximum
            # their drift would loosen that group's bound for every row.
            far = np.sort(np.argsort(-drift, kind="stable")[: max(1, k // FAR_FRACTION)])
            near_drift = drift.copy()
            near_drift[far] = 0
            gdrift = np.zeros(g, np.float64)
            np.maximum.at(gdrift, self.groups, near_drift)
            # Lowered by a bit more than the drift, a bound stays one after the float32
            # subtraction: its rounding is at most u * the bound, and a bound is at most
            # |x| + |c| (old or new centroids).
            cmax = np.sqrt(max(cmax2, float((self.prev**2).sum(1).max())))
            gdrift = (gdrift * (1 + 1e-6) + 2 * U32 * (self.xmax + cmax)).astype(np.float32)
            far_t = np.ascontiguousarray(-2.0 * c[far].T, dtype=np.float32)
            far_cn = cn[far].astype(np.float32)
            far_group = self.groups[far]
        res = AssignResult.empty(k, self.d)
        recomputed = 0
        for a, xb in blocks:
            b = len(xb)
            ids = self.assign_ids[a : a + b]
            lb = self.lb[a : a + b]
            xn = np.einsum("ij,ij->i", xb, xb)
            err = slack * (xn + cmax2)
            if use_bounds:
                dist = np.empty(b, np.float32)
                redo_parts = []
                # in sub-blocks whose bounds stay in cache across the passes over them
                for r in range(0, b, TEST_ROWS):
                    sl = slice(r, min(b, r + TEST_ROWS))
                    args = (xb[sl], xn[sl], err[sl], ids[sl], lb[sl], dist[sl], c, gdrift)
                    redo_parts.append(r + self._test(*args, far, far_t, far_cn, far_group))
                redo = np.concatenate(redo_parts) if redo_parts else np.arange(0)
            else:
                dist = np.empty(b, np.float32)
                redo = np.arange(b)
                if b:
                    self.xmax = max(self.xmax, float(np.sqrt(xn.max())) * (1 + 1e-6))
            recomputed += len(redo)
            if len(redo):
                self._recompute(xb, xn, err, redo, ids, lb, dist, c2t, cn_cols, c)
            w = None if weights is None else weights[a : a + b]
            res.sums += sums_of(ids, xb, k, w)
            res.counts += np.bincount(ids, minlength=k)
            res.objective += float(dist.sum(dtype=np.float64))
        self.prev = c.astype(np.float64)
        self.last_recomputed, self.last_full = recomputed, not use_bounds
        res.search_s = time.perf_counter() - t0
        res.recomputed = recomputed
        log.debug(
            "bounded assignment: %d of %d rows recomputed (%s)",
            recomputed,
            self.n,
            "bounds" if use_bounds else "full pass",
        )
        return res

    def _test(
        self,
        xb: np.ndarray,
        xn: np.ndarray,
        err: np.ndarray,
        ids: np.ndarray,
        lb: np.ndarray,
        dist: np.ndarray,
        c: np.ndarray,
        gdrift: np.ndarray,
        far: np.ndarray,
        far_t: np.ndarray,
        far_cn: np.ndarray,
        far_group: np.ndarray,
    ) -> np.ndarray:
        """Update the bounds of these rows for the drift, fill ``dist`` (to their own
        centroid); the rows whose bounds cannot keep their centroid."""
        lb -= gdrift
        diff = xb - c[ids]
        dist[:] = np.einsum("ij,ij->i", diff, diff)
        # Lower bounds on the exact distances to the far-moved centroids (the
        # computed ones minus their float error), folded into their groups'.
        dfar = xb @ far_t
        dfar += far_cn
        dfar += xn[:, None]
        dfar -= err[:, None]
        np.maximum(dfar, 0, out=dfar)
        np.sqrt(dfar, out=dfar)
        dfar[far[None, :] == ids[:, None]] = np.inf  # a row's own centroid
        for j in range(len(far)):  # a loop over a few centroids, not rows
            col = lb[:, far_group[j]]  # a view: updated in place
            np.minimum(col, dfar[:, j], out=col)
        # keep the row if even the float error of Lloyd's search cannot make
        # another centroid nearer (dist is within d ulps: 4 d u relative)
        thr = np.sqrt(dist * (1 + 4 * self.d * U32) + 2 * err)
        return np.flatnonzero(thr >= lb.min(1))

    def _settle_ties(
        self,
        xb: np.ndarray,
        rows: np.ndarray,
        best: np.ndarray,
        second: np.ndarray,
        err: np.ndarray,
        ids: np.ndarray,
        lb: np.ndarray,
    ) -> None:
        """Rows whose two nearest centroids are closer than the rounding of two float32
        computations can tell apart get Lloyd's own search's answer (the same
        function, ``search``, as assign_to), so that a near-tie is broken as Lloyd
        breaks it: one differing row would make the runs drift apart over iterations."""
        assert self.groups is not None and self._search is not None
        near = np.flatnonzero(second - best <= err[rows])
        if not len(near):
            return
        r = rows[near]
        # at least TIE_MIN_ROWS rows: faiss takes its BLAS path (Lloyd's) from 20 rows on
        x = xb[np.resize(r, max(len(r), TIE_MIN_ROWS))]
        _, lloyd = self._search(x)
        lloyd = np.asarray(lloyd).ravel()[: len(r)].astype(np.int64)
        mine = ids[r]
        moved = np.flatnonzero(lloyd != mine)
        if not len(moved):
            return
        rr, old = r[moved], mine[moved]
        ids[rr] = lloyd[moved]
        # ``old`` is now one of the other centroids: its group's bound must cover it
        g = self.groups[old]
        lo = np.sqrt(np.maximum(best[near[moved]] - err[rr], 0)).astype(np.float32)
        lb[rr, g] = np.minimum(lb[rr, g], lo)

    def _recompute(
        self,
        xb: np.ndarray,
        xn: np.ndarray,
        err: np.ndarray,
        redo: np.ndarray,
        ids: np.ndarray,
        lb: np.ndarray,
        dist: np.ndarray,
        c2t: np.ndarray,
        cn_cols: np.ndarray,
        c: np.ndarray,
    ) -> None:
        """Full distances of rows ``redo`` of the block: new id, distance and group bounds."""
        assert self.cols is not None
        ncol = c2t.shape[1]
        g = lb.shape[1]
        m = ncol // g
        step = max(1, DIST_BLOCK_BYTES // (4 * ncol))
        for r in range(0, len(redo), step):
            rows = redo[r : r + step]
            nr = len(rows)
            dm = xb[rows] @ c2t  # -2 x.c, columns slot-major
            dm += cn_cols  # |c|^2 - 2 x.c (|x|^2 is the same for every centroid of a row)
            j = dm.argmin(1)
            best = dm[np.arange(nr), j] + xn[rows]
            dm[np.arange(nr), j] = np.inf  # a row's bound is over the *other* centroids
            gmin = dm.reshape(nr, m, g).min(axis=1)
            gmin += xn[rows, None]
            second = gmin.min(1)
            gmin -= err[rows, None]  # the computed distance minus its float error
            np.maximum(gmin, 0, out=gmin)
            lb[rows] = np.sqrt(gmin)
            gmin = second  # kept for the near-ties below
            ids[rows] = self.cols[j]
            if self._search is not None:
                self._settle_ties(xb, rows, best, gmin, err, ids, lb)
        # the objective sums |x - c|^2 as for the kept rows
        diff = xb[redo] - c[ids[redo]]
        dist[redo] = np.einsum("ij,ij->i", diff, diff)


@contextlib.contextmanager
def blas_threads(nthreads: int | None) -> Iterator[None]:
    """numpy's BLAS limited to ``nthreads`` in this block (a server set to 1 thread must
    not take every core with its matrix products)."""
    if not nthreads:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(int(nthreads), user_api="blas"):
        yield
