"""Row and list ranges: the one splitter of ``[0, n)`` into balanced parts, the CLI's
range arguments, and overlap checks.  Every caller (k-means servers, vslices,
hslices, autobuild tasks, the launchers and the benchmarks) splits through
:func:`split_range`, so a part's bounds are the same wherever they are computed.
"""

from __future__ import annotations

from distributed_ondisk.errors import InputError


def split_range(n: int, nslice: int, slice_no: int) -> tuple[int, int]:
    """Rows (or lists) ``[a, b)`` of part ``slice_no`` out of ``nslice`` balanced parts of ``n``.

    Sizes differ by at most one and the parts tile ``[0, n)`` in order.
    """
    if nslice < 1:
        raise InputError(f"nslice must be >= 1, got {nslice}")
    if not 0 <= slice_no < nslice:
        raise InputError(f"slice_no must be in [0, {nslice}), got {slice_no}")
    if n < 0:
        raise InputError(f"cannot split a negative count {n}")
    return n * slice_no // nslice, n * (slice_no + 1) // nslice


def resolve_range(
    n: int,
    lo: int | None,
    hi: int | None,
    nslice: int | None,
    slice_no: int | None,
    what: str = "rows",
) -> tuple[int, int]:
    """Turn the CLI's ``--i0/--i1`` or ``--nslice/--slice_no`` into a checked ``[lo, hi)``.

    The two ways are exclusive; with neither, the whole ``[0, n)``.  ``hi``
    larger than ``n`` is an error rather than a silent clip: a job script with a
    wrong size should fail loudly.
    """
    by_slice = nslice is not None or slice_no is not None
    if by_slice and (lo is not None or hi is not None):
        raise InputError(f"give either an explicit {what} range or --nslice/--slice_no, not both")
    if by_slice:
        if nslice is None or slice_no is None:
            raise InputError("--nslice and --slice_no go together")
        return split_range(n, nslice, slice_no)
    lo = 0 if lo is None else lo
    hi = n if hi is None else hi
    if not 0 <= lo < hi <= n:
        raise InputError(f"{what} range [{lo}, {hi}) is empty or outside [0, {n})")
    return lo, hi


def plan_hslices(nlist: int, nshard: int) -> list[tuple[int, int]]:
    """List ranges of the ``nshard`` horizontal shards."""
    return [split_range(nlist, nshard, j) for j in range(nshard)]


def find_overlaps(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of indices into ``ranges`` whose half-open ranges intersect.

    Each range that starts before the furthest end seen so far is paired with
    the range owning that end, so every overlapping range is reported at least once.
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    bad = []
    owner = None
    for i in order:
        if owner is not None and ranges[i][0] < ranges[owner][1]:
            bad.append((owner, i))
        if owner is None or ranges[i][1] > ranges[owner][1]:
            owner = i
    return bad
