"""Combined index over real on-disk shards: same results as the in-RAM index, read-only,
and refusal of missing, overlapping and foreign shards."""

from __future__ import annotations

import os
import shutil

import faiss
import numpy as np
import pytest
from build_helpers import clustered, reference_index
from test_search_support import build_shards

from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.search.combined import CombinedIndex
from distributed_ondisk.search.shardset import check_coverage, expand_shard_args


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd, x = build_shards(tmp_path_factory.mktemp("search_wd"), nh=(3, 2))
    return wd, x, clustered(300, 32, seed=7)


def ram_search(index, xt, nprobe, k, ef=None):
    """Search an in-RAM IVF index with already transformed queries (the transform is
    applied once, row-exactly, by the code under test and by this reference alike)."""
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    if ef is not None:
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = ef
    return ivf.search(xt, k)


@pytest.mark.parametrize("nprobe", [1, 8, 64])
def test_combined_equals_in_ram(built, nprobe):
    wd, x, q = built
    ci = CombinedIndex(wd.hslices(3))
    assert ci.ntotal == len(x)
    xt = ci.transform(q)
    D0, I0 = ram_search(reference_index(wd, x), xt, nprobe, 20)
    assert (I0[:, 0] >= 0).all()
    D1, I1 = ci.search(q, 20, nprobe=nprobe)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)
    D2, I2 = ram_search(ci.to_ram(), xt, nprobe, 20)
    np.testing.assert_array_equal(I2, I0)
    np.testing.assert_array_equal(D2, D0)


def test_ef_search_is_per_call(built):
    wd, x, q = built
    ci = CombinedIndex(f"{wd.hslice(0, 2)},{wd.hslice(1, 2)}")
    D0, I0 = ram_search(reference_index(wd, x), ci.transform(q), 16, 10, ef=16)
    D1, I1 = ci.search(q, 10, nprobe=16, ef_search=16)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)
    assert ci.quantizer.hnsw.efSearch == ci.default_ef  # no shared state was changed


def test_shards_are_opened_read_only_and_relative(built, tmp_path):
    wd, _x, q = built
    moved = tmp_path / "elsewhere" / "hslices"
    shutil.copytree(wd.hslice_dir, moved)
    shutil.copy(wd.trained, tmp_path / "elsewhere" / "trained.index")
    shutil.copy(str(wd.trained) + ".manifest.json", tmp_path / "elsewhere")
    for f in moved.iterdir():
        os.chmod(f, 0o444)
    ci = CombinedIndex([moved / p.name for p in wd.hslices(3)])
    D0, I0 = CombinedIndex(wd.hslices(3)).search(q, 10, nprobe=8)
    D1, I1 = ci.search(q, 10, nprobe=8)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)


def test_missing_shard_is_named(built):
    wd, _, _ = built
    shards = wd.hslices(3)
    with pytest.raises(IndexFileError, match=r"lists \[21, 42\) of 64 are in no given shard"):
        CombinedIndex([shards[0], shards[2]])


def test_overlapping_shards_are_named(built):
    wd, _, _ = built
    with pytest.raises(
        IndexFileError,
        match="hslice_0000_of_0002.*hslice_0001_of_0003.*overlap"
        "|hslice_0000_of_0003.*hslice_0000_of_0002.*overlap",
    ):
        CombinedIndex(wd.hslices(3) + [wd.hslice(0, 2)])


def test_foreign_shard_is_refused(built, tmp_path):
    wd, _, _ = built
    other, _ = build_shards(tmp_path / "other", nh=(2,), n=6000, seed=3)
    with pytest.raises(IndexFileError, match="another trained index"):
        CombinedIndex([wd.hslice(0, 2), other.hslice(1, 2)], trained=wd.trained)


def test_directory_argument_and_bad_paths(built, tmp_path):
    wd, _, _ = built
    assert len(expand_shard_args(wd.hslice_dir)) == 5
    with pytest.raises(InputError, match="no such shard"):
        expand_shard_args(str(tmp_path / "nope.index"))
    with pytest.raises(InputError, match="holds no shard"):
        expand_shard_args(tmp_path)


def test_partial_index_refuses_lists_it_does_not_hold(built):
    wd, _, q = built
    part = CombinedIndex([wd.hslice(1, 3)], complete=False)
    xt = part.transform(q[:5])
    Dq, Iq = part.coarse(xt, 4)
    Iq[:, 0] = 0
    with pytest.raises(InputError, match="list 0 is not held here"):
        part.search_preassigned(xt, 10, Iq, Dq)
    with pytest.raises(InputError, match="only a complete"):
        part.to_ram()


def test_check_coverage_pure():
    check_coverage([("a", 0, 5), ("b", 5, 10)], 10)
    check_coverage([("a", 0, 5)], 10, complete=False)
    with pytest.raises(IndexFileError, match=r"lists \[5, 7\), \[9, 10\)"):
        check_coverage([("a", 0, 5), ("b", 7, 9)], 10)
    with pytest.raises(IndexFileError, match=r"a .*b .*overlap on lists \[3, 5\)"):
        check_coverage([("b", 3, 10), ("a", 0, 5)], 10)
    with pytest.raises(IndexFileError, match="outside"):
        check_coverage([("a", 0, 11)], 10)


def test_bad_query_parameters(built):
    wd, _, q = built
    ci = CombinedIndex(wd.hslices(3))
    with pytest.raises(InputError, match="nprobe"):
        ci.search(q, 10, nprobe=0)
    with pytest.raises(InputError, match="k must be"):
        ci.search(q, 0, nprobe=1)
    with pytest.raises(InputError, match=r"\(n, 32\)"):
        ci.search(q[:, :5], 10, nprobe=1)
