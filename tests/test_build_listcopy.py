"""The merge's byte plan and gather, against a naive per-list loop, and list blocks
that span many lists (so shard ranges cut through checksummed blocks)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from build_helpers import copy_vslice, flip_byte, make_workdir, reference_index, search
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk import vslice as slicefile
from distributed_ondisk.ondisk.hslice import open_hslices
from distributed_ondisk.ondisk.indexfile import IDX_BYTES
from distributed_ondisk.ondisk.vslice import read_layout
from distributed_ondisk.stages.listcopy import _gather
from distributed_ondisk.stages.merge import MergeJob, merge_hslice
from distributed_ondisk.stages.plan import gather_plan, plan_merge_batches, plan_merge_reads
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice


def naive_merge(slices: list[list[tuple[bytes, bytes]]]) -> bytes:
    """Per list: every slice's codes, then every slice's ids."""
    out = []
    for j in range(len(slices[0])):
        out += [s[j][0] for s in slices] + [s[j][1] for s in slices]
    return b"".join(out)


@settings(max_examples=60, deadline=None)
@given(
    nsl=st.integers(1, 5),
    nl=st.integers(1, 12),
    cs=st.sampled_from([1, 5, 38, 72]),
    seed=st.integers(0, 2**31),
    cut=st.integers(0, 12),
)
def test_gather_matches_naive_merge(nsl, nl, cs, seed, cut):
    rs = np.random.default_rng(seed)
    sizes = rs.integers(0, 4, (nsl, nl)) * rs.integers(0, 2, (nsl, nl))  # many empty lists
    slices = [[(rs.bytes(int(n) * cs), rs.bytes(int(n) * IDX_BYTES)) for n in row] for row in sizes]
    buf = np.frombuffer(b"".join(c + i for s in slices for c, i in s), dtype=np.uint8)
    offsets, order = gather_plan(sizes, cs)
    assert offsets[-1] == len(buf)
    # written as two pieces cut after list `cut` (as the merge cuts a read batch)
    cut = min(cut, nl)
    nbytes = [
        int(sizes[:, :cut].sum()) * (cs + IDX_BYTES),
        int(sizes[:, cut:].sum()) * (cs + IDX_BYTES),
    ]
    pieces = [(0, 2 * nsl * cut, nbytes[0]), (2 * nsl * cut, 2 * nsl * nl, nbytes[1])]
    got = b"".join(p.to_pybytes() for p in _gather(buf, offsets, order, pieces))
    assert got == naive_merge(slices)


def test_gather_plan_starts_each_slice_where_the_previous_ends():
    sizes = np.array([[1, 0, 2], [0, 3, 1]])
    offsets, order = gather_plan(sizes, 4)
    per_slice = sizes.sum(1) * (4 + IDX_BYTES)
    assert offsets[0] == 0 and offsets[6] == per_slice[0] and offsets[12] == per_slice.sum()
    assert sorted(order.tolist()) == list(range(12))


def test_batches_cover_lists_in_order_and_respect_the_bound():
    sizes = np.array([0, 5, 1, 0, 40, 2, 2, 0])
    b = plan_merge_batches(sizes, 12, 100)
    assert b[0][0] == 0 and b[-1][1] == len(sizes)
    assert all(x[1] == y[0] for x, y in itertools.pairwise(b))
    for a, z in b:  # at most 100 bytes, unless one list alone is bigger
        assert sizes[a:z].sum() * 20 <= 100 or z - a == 1


def test_read_batches_are_cut_into_pieces_that_tile_them():
    sizes = np.array([3, 0, 7, 1, 40, 2, 2, 0, 5, 9])
    nsl, cs = 3, 12
    reads = plan_merge_reads(sizes, nsl, cs, 100, 4)
    assert [(a, b) for a, b, _ in reads] == plan_merge_batches(sizes, cs, 400)
    for a, b, pieces in reads:
        bounds = [p[0] for p in pieces] + [pieces[-1][1]]
        assert bounds[0] == 0 and bounds[-1] == 2 * nsl * (b - a)  # every part, in order
        assert all(x[1] == y[0] for x, y in itertools.pairwise(pieces))
        assert all(first % (2 * nsl) == 0 for first, _, _ in pieces)  # whole lists only
        assert sum(p[2] for p in pieces) == sizes[a:b].sum() * (cs + IDX_BYTES)


@pytest.fixture(scope="module")
def coarse_blocks(tmp_path_factory):
    """Vslices whose checksummed blocks hold 8 lists each (64 lists, 8 blocks)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(slicefile, "MAX_BLOCKS", 8)
    try:
        wd, x = make_workdir(tmp_path_factory.mktemp("blocks"), n=8000, d=16, k=64)
        for i in range(2):
            make_vslice(VsliceJob(wd.trained, wd.data(), wd.vslice(i, 2), nslice=2, slice_no=i))
    finally:
        mp.undo()
    assert mf.load_manifest(wd.vslice(0, 2))["regions"]["block_lists"] == 8
    return wd, x


@pytest.mark.parametrize("threads", [1, 2])
def test_shards_cutting_through_blocks_search_like_ram(coarse_blocks, tmp_path, threads):
    wd, x = coarse_blocks
    cuts = [0, 3, 13, 40, 64]  # none on a block boundary but the ends
    outs = [tmp_path / f"h{j}.index" for j in range(len(cuts) - 1)]
    for o, a, b in zip(outs, cuts[:-1], cuts[1:]):
        merge_hslice(
            MergeJob([str(wd.vslice_dir)], o, l0=a, l1=b, batch_bytes=3000, threads=threads)
        )
    q = x[::53][:100] + np.float32(0.05)
    D0, I0 = search(reference_index(wd, x), q, 16)
    D1, I1 = search(open_hslices(wd.trained, outs), q, 16)
    assert np.array_equal(I0, I1) and np.array_equal(D0, D1)


@pytest.mark.parametrize("where", ["before", "after"])
def test_corruption_in_an_edge_block_outside_the_range_is_still_caught(
    coarse_blocks, tmp_path, where
):
    """Lists 3 and 13 are outside [5, 11) but in its edge blocks [0, 8) and [8, 16)."""
    wd, _ = coarse_blocks
    bad = copy_vslice(wd.vslice(1, 2), tmp_path / "v1.index")
    lay = read_layout(bad)
    lst = 3 if where == "before" else 13
    assert lay.sizes[lst] > 0
    flip_byte(bad, int(lay.offsets[lst]) + 1, mask=0x01)
    out = tmp_path / "h.index"
    with pytest.raises(IndexFileError, match=r"v1.index: list block [01] .*corrupted"):
        merge_hslice(MergeJob([str(wd.vslice(0, 2)), str(bad)], out, l0=5, l1=11))
    assert not out.exists()
