"""The build pipeline end to end on small clustered data: exact equality with an
index built in RAM in one go, determinism, movable shards, skipping finished work."""

from __future__ import annotations

import itertools
import shutil

import faiss
import numpy as np
import pytest
from build_helpers import build_all, make_workdir, reference_index, run_script, search

from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.hslice import open_hslice, open_hslices
from distributed_ondisk.ondisk.trained import load_trained_index
from distributed_ondisk.stages.merge import MergeJob, merge_hslice
from distributed_ondisk.stages.train import TrainedIndexConfig
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd, x = make_workdir(tmp_path_factory.mktemp("wd"))
    build_all(wd, nv=3, nh=2, batch_bytes=50000)  # small batches: many batches per shard
    return wd, x


def queries(x):
    return x[::97][:300] + np.float32(0.05)


@pytest.mark.parametrize("nprobe", [1, 8, 64])
def test_shards_search_exactly_like_ram_index(built, nprobe):
    wd, x = built
    q = queries(x)
    D0, I0 = search(reference_index(wd, x), q, nprobe)
    D1, I1 = search(open_hslices(wd.trained, wd.hslices(2)), q, nprobe)
    assert np.array_equal(I0, I1)
    assert np.array_equal(D0, D1)
    assert (I0[:, 0] >= 0).all()


def test_trained_index_is_trained_empty_and_matches_slices(built):
    wd, _ = built
    index, fp = load_trained_index(wd.trained)
    ivf = faiss.extract_index_ivf(index)
    assert index.is_trained and index.ntotal == 0 and ivf.quantizer.ntotal == ivf.nlist == 64
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSWFlat)
    tdoc = mf.verify_manifest(wd.trained, "trained_index")
    assert tdoc["fingerprint"] == fp and tdoc["description"] == "RR32,IVF64_HNSW32,SQ6"
    for p in wd.vslices(3):
        doc = mf.verify_manifest(p, "vslice")
        assert doc["trained_fingerprint"] == fp and doc["structure"] == tdoc["structure"]
        assert doc["quantizer"] == "placeholder"
    rows = [mf.load_manifest(p)["id_range"] for p in wd.vslices(3)]
    assert rows == [[0, 6666], [6666, 13333], [13333, 20000]]


def test_hslices_cover_all_lists_with_ids_in_order(built):
    wd, x = built
    total = 0
    for j, (l0, l1) in enumerate([(0, 32), (32, 64)]):
        hs = open_hslice(wd.hslice(j, 2))
        assert hs.list_range == (l0, l1)
        mf.verify_manifest(wd.hslice(j, 2), "hslice")
        for lno in range(64):
            n = hs.invlists.list_size(lno)
            assert (n > 0) == (l0 <= lno < l1) or n == 0
            if n:
                ids = faiss.rev_swig_ptr(hs.invlists.get_ids(lno), n)
                assert (np.diff(ids) > 0).all()  # slices in id order, ids ascending
        total += hs.index.ntotal
        stored = wd.hslice_invlists(j, 2).read_bytes()
        assert hs.invlists.filename.endswith(wd.hslice_invlists(j, 2).name)
        assert len(stored) == hs.invlists.totsize
    assert total == len(x)
    # the index file names its lists file relatively
    assert str(wd.root).encode() not in wd.hslice(0, 2).read_bytes()


def test_shards_can_move(built, tmp_path, monkeypatch):
    wd, x = built
    moved = tmp_path / "elsewhere"
    shutil.copytree(wd.hslice_dir, moved)
    monkeypatch.chdir(tmp_path)  # neither the old nor the new directory
    q = queries(x)
    D0, I0 = search(open_hslices(wd.trained, wd.hslices(2)), q, 8)
    D1, I1 = search(open_hslices(wd.trained, [moved / p.name for p in wd.hslices(2)]), q, 8)
    assert np.array_equal(I0, I1) and np.array_equal(D0, D1)


def test_vslice_bytes_do_not_depend_on_threads_or_block_size(built, tmp_path):
    wd, _ = built
    outs = []
    for nt, bs in [(1, 50000), (2, 777), (2, 3000)]:
        out = tmp_path / f"v_{nt}_{bs}.index"
        make_vslice(
            VsliceJob(wd.trained, wd.data(), out, nslice=3, slice_no=1, block_rows=bs, threads=nt)
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2] == wd.vslice(1, 3).read_bytes()


def test_rerun_skips_complete_outputs_and_force_rebuilds_same_bytes(built):
    wd, _ = built
    v, h = wd.vslice(0, 3), wd.hslice(1, 2)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (v, h, wd.hslice_invlists(1, 2))}
    make_vslice(VsliceJob(wd.trained, wd.data(), v, nslice=3, slice_no=0))
    merge_hslice(MergeJob([str(wd.vslice_dir)], h, nslice=2, slice_no=1))
    assert all(p.stat().st_mtime_ns == t for p, (t, _) in before.items())
    make_vslice(VsliceJob(wd.trained, wd.data(), v, nslice=3, slice_no=0, force=True))
    merge_hslice(MergeJob([str(wd.vslice_dir)], h, nslice=2, slice_no=1, force=True))
    assert all(p.read_bytes() == b for p, (_, b) in before.items())


def test_scripts_run_standalone_and_agree_with_library(built, tmp_path):
    wd, x = built
    vs = [tmp_path / f"s{i}.index" for i in range(2)]
    for i, v in enumerate(vs):
        r = run_script(
            "make_index_vslice.py",
            "--inputindex",
            wd.trained,
            "--input",
            wd.data(),
            "--i0",
            10000 * i,
            "--i1",
            10000 * (i + 1),
            "-o",
            v,
            "--nt",
            1,
            "--bs",
            4096,
        )
        assert r.returncode == 0, r.stderr
    outs = [tmp_path / "sh" / f"h{j}.index" for j in range(3)]
    for j, o in enumerate(outs):
        r = run_script(
            "merge_to_ondisk.py",
            "--inputs",
            str(tmp_path / "s*.index"),
            "--nslice",
            3,
            "--slice_no",
            j,
            "--output",
            o,
            "--nt",
            2,
            "--trained",
            wd.trained,
        )
        assert r.returncode == 0, r.stderr
    q = queries(x)
    D0, I0 = search(reference_index(wd, x), q, 16)
    D1, I1 = search(open_hslices(wd.trained, outs), q, 16)
    assert np.array_equal(I0, I1) and np.array_equal(D0, D1)


@pytest.mark.parametrize(
    "rotation,encoder", [("none", "SQ8"), ("pca", "SQfp16"), ("opq", "PQ8"), ("random", "PQ4x6")]
)
def test_other_transforms_and_encoders_are_exact_too(tmp_path, rotation, encoder):
    cfg = TrainedIndexConfig(rotation=rotation, encoder=encoder)
    wd, x = make_workdir(tmp_path, n=6000, d=32, k=16, cfg=cfg)
    build_all(wd, nv=2, nh=2)
    q = queries(x)
    D0, I0 = search(reference_index(wd, x), q, 4)
    D1, I1 = search(open_hslices(wd.trained, wd.hslices(2)), q, 4)
    assert np.array_equal(I0, I1) and np.array_equal(D0, D1)


def test_keepquantizer_slices_merge_the_same(built, tmp_path):
    wd, _ = built
    kept = [tmp_path / f"k{i}.index" for i in range(3)]
    for i, p in enumerate(kept):
        make_vslice(VsliceJob(wd.trained, wd.data(), p, nslice=3, slice_no=i, keep_quantizer=True))
        assert p.stat().st_size > wd.vslice(i, 3).stat().st_size
        assert faiss.extract_index_ivf(faiss.read_index(str(p))).quantizer.ntotal == 64
    out = tmp_path / "h.index"
    merge_hslice(MergeJob([str(p) for p in kept], out, nslice=2, slice_no=0))
    assert out.with_suffix(".invlists").read_bytes() == wd.hslice_invlists(0, 2).read_bytes()


@pytest.mark.parametrize("transform", ["RR48", "PCAR24", "OPQ8_48"])
def test_transform_rows_is_row_exact_whatever_the_cut(transform):
    """Rows transformed in any cut (and with a batch offset) give the bytes of the
    whole batch, and agree with faiss's own apply up to rounding."""
    from distributed_ondisk.ondisk.transform import CHUNK_ROWS, transform_rows

    rs = np.random.default_rng(3)
    x = (rs.standard_normal((40, 48)) * 3)[rs.integers(0, 40, 3000)].astype(np.float32)
    x += rs.standard_normal(x.shape).astype(np.float32)
    index = faiss.index_factory(48, f"{transform},Flat")
    index.train(x)
    _, whole = transform_rows(index, x)
    assert np.allclose(whole, index.chain.at(0).apply(x), atol=1e-4)
    for cuts in ([0, 1, 2, CHUNK_ROWS + 5, 1000, 3000], [0, 777, 1554, 2999, 3000]):
        parts = [transform_rows(index, x[a:b], a)[1] for a, b in itertools.pairwise(cuts)]
        assert np.concatenate(parts).tobytes() == whole.tobytes()
    # a batch that starts at row 100 of a longer batch gives its rows' bytes too
    assert transform_rows(index, x[100:400], 100)[1].tobytes() == whole[100:400].tobytes()
