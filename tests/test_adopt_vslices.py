"""Slices made by faiss alone (no manifest) merge after ``merge_to_ondisk.py --adopt``,
into shards holding exactly the lists of the same trained index filled in RAM by the
same faiss calls; bad slices are refused naming the file, and nothing is adopted then."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from build_helpers import flip_byte, make_workdir, run_script

from distributed_ondisk.errors import IndexFileError, InputError, OutputError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.hslice import open_hslice
from distributed_ondisk.search.combined import CombinedIndex
from distributed_ondisk.stages import adopt as adopt_mod
from distributed_ondisk.stages.adopt import adopt_vslices
from distributed_ondisk.stages.merge import MergeJob, merge_hslice

N, D, K = 6000, 16, 32
BOUNDS = [(0, 2000), (2000, 4100), (4100, N)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    wd, x = make_workdir(tmp_path_factory.mktemp("adopt_wd"), n=N, d=D, k=K)
    return wd, x


def classic_slice(trained: Path, x: np.ndarray, a: int, b: int, out: Path) -> Path:
    """What the classic faiss make_index_vslice.py does: read, add_with_ids, write."""
    index = faiss.read_index(str(trained))
    index.add_with_ids(x[a:b], np.arange(a, b, dtype=np.int64))
    faiss.write_index(index, str(out))
    return out


def classic_slices(
    trained: Path, x: np.ndarray, folder: Path, bounds=BOUNDS, suffix: str = ".index"
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        classic_slice(trained, x, a, b, folder / f"slice{i}{suffix}")
        for i, (a, b) in enumerate(bounds)
    ]


def ram_reference(trained: Path, x: np.ndarray, bounds=BOUNDS) -> faiss.Index:
    """The same trained index filled in RAM by the same add calls."""
    index = faiss.read_index(str(trained))
    for a, b in bounds:
        index.add_with_ids(x[a:b], np.arange(a, b, dtype=np.int64))
    return index


def list_content(invlists, j: int, code_size: int) -> tuple[np.ndarray, bytes]:
    n = invlists.list_size(j)
    if n == 0:
        return np.zeros(0, dtype=np.int64), b""
    ids = faiss.rev_swig_ptr(invlists.get_ids(j), n).copy()
    codes = faiss.rev_swig_ptr(invlists.get_codes(j), n * code_size).tobytes()
    return ids, codes


def assert_shards_equal_ram(shards: list[Path], ram: faiss.Index) -> None:
    rivf = faiss.extract_index_ivf(ram)
    cs, seen = rivf.code_size, 0
    for s in shards:
        h = open_hslice(s)
        l0, l1 = h.list_range
        for j in range(l0, l1):
            ids0, codes0 = list_content(rivf.invlists, j, cs)
            ids1, codes1 = list_content(h.invlists, j, cs)
            np.testing.assert_array_equal(ids1, ids0, err_msg=f"list {j} of {s}")
            assert codes1 == codes0, f"codes of list {j} of {s}"
            seen += len(ids1)
    assert seen == ram.ntotal == N


def adopt_and_merge_script(slices: list[Path], out_dir: Path, *extra: str) -> list[Path]:
    outs = []
    for j in range(2):
        out = out_dir / f"shard{j}.index"
        r = run_script(
            "merge_to_ondisk.py",
            "--adopt",
            "--inputs",
            slices[0].parent,
            "--nslice",
            "2",
            "--slice_no",
            str(j),
            "--output",
            out,
            *extra,
        )
        assert r.returncode == 0, r.stderr
        outs.append(out)
    return outs


@pytest.mark.parametrize("with_trained", [True, False])
def test_classic_slices_adopted_then_merged_equal_the_in_ram_index(base, tmp_path, with_trained):
    wd, x = base
    slices = classic_slices(wd.trained, x, tmp_path / "classic")
    r = run_script(
        "merge_to_ondisk.py",
        "--inputs",
        slices[0].parent,
        "--nslice",
        "2",
        "--slice_no",
        "0",
        "--output",
        tmp_path / "refused.index",
    )
    assert r.returncode == 2 and "no manifest" in r.stderr and "--adopt" in r.stderr, r.stderr
    extra = ("--trained", str(wd.trained)) if with_trained else ()
    outs = adopt_and_merge_script(slices, tmp_path / "shards", *extra)
    for s in slices:
        doc = mf.verify_manifest(s, "vslice")
        assert doc["adopted"] and doc["quantizer"] == "kept"
    ram = ram_reference(wd.trained, x)
    assert_shards_equal_ram(outs, ram)
    # searchable with the trained index (found or given), same answers as in RAM
    ci = CombinedIndex(outs, trained=wd.trained)
    q = x[:40] + 0.01
    D1, I1 = ci.search(q, 10, nprobe=8)
    rivf = faiss.extract_index_ivf(ram)
    rivf.nprobe = 8
    D0, I0 = rivf.search(ci.transform(q), 10)  # same transformed queries
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)
    if with_trained:  # the link was recorded: found without --trained
        assert CombinedIndex(outs).trained_path.resolve() == wd.trained.resolve()


def test_pure_faiss_pipeline_without_manifests_anywhere(tmp_path):
    """Trained index made by faiss alone too (no manifest, another factory string); the
    slices are adopted without --trained, identified by their content, and the shards
    then accept that trained file although its sha256 was never recorded."""
    rs = np.random.RandomState(3)
    x = (rs.randn(3000, 8) * 3).astype(np.float32)
    trained = faiss.index_factory(8, "IVF16,SQ8")
    trained.train(x)
    tp = tmp_path / "models" / "ivf16.faiss"
    tp.parent.mkdir()
    faiss.write_index(trained, str(tp))
    bounds = [(0, 1000), (1000, 3000)]
    slices = classic_slices(tp, x, tmp_path / "v", bounds, suffix=".faiss")
    adopted = adopt_vslices(slices)
    assert adopted == slices
    fp = mf.load_manifest(slices[0], "vslice")["trained_fingerprint"]
    assert fp.startswith("content-sha256:")
    outs = [tmp_path / "h" / f"h{j}.index" for j in range(2)]
    for j, out in enumerate(outs):
        merge_hslice(MergeJob([str(tmp_path / "v" / "*.faiss")], out, nslice=2, slice_no=j))
    assert_shards_equal_ram_n(outs, ram_reference(tp, x, bounds), len(x))
    ci = CombinedIndex(outs, trained=tp)
    assert ci.ntotal == len(x)
    with pytest.raises(IndexFileError, match="cannot find the trained index.*--trained"):
        CombinedIndex(outs)
    assert adopt_vslices(slices) == []  # rerun: nothing new, manifests kept


def assert_shards_equal_ram_n(shards, ram, n):
    rivf = faiss.extract_index_ivf(ram)
    total = 0
    for s in shards:
        h = open_hslice(s)
        for j in range(*h.list_range):
            a, b = list_content(rivf.invlists, j, rivf.code_size), list_content(
                h.invlists, j, rivf.code_size
            )
            np.testing.assert_array_equal(b[0], a[0])
            assert a[1] == b[1]
            total += len(b[0])
    assert total == n


def no_manifests(paths) -> bool:
    return not any(mf.manifest_path(p).exists() for p in paths)


def test_bad_slices_are_refused_naming_the_file_and_nothing_is_adopted(base, tmp_path):
    wd, x = base
    good = classic_slices(wd.trained, x, tmp_path / "ok", BOUNDS[:2])

    def refused(bad: Path, match: str, trained=None, exc=IndexFileError):
        with pytest.raises(exc, match=match) as e:
            adopt_vslices(good + [bad], trained)
        assert str(bad) in str(e.value) or bad.name in str(e.value), str(e.value)
        assert no_manifests(good + [bad])

    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"\x00not a faiss index" * 100)
    refused(garbage, "unreadable index file")
    flat = tmp_path / "flat.index"
    faiss.write_index(faiss.IndexFlatL2(D), str(flat))
    refused(flat, "not an IVF index")
    truncated = tmp_path / "truncated.index"
    classic_slice(wd.trained, x, 4100, N, truncated)
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    refused(truncated, "truncated|unreadable|not stored contiguously|ends early")
    overlap = classic_slice(wd.trained, x, 1900, 2500, tmp_path / "overlap.index")
    refused(overlap, r"id ranges overlap.*\[0, 2000\]|id ranges overlap.*\[2000, 4100\]")
    sizes = tmp_path / "sizes.index"
    index = faiss.read_index(str(wd.trained))
    index.add_with_ids(x[4100:], np.arange(4100, N, dtype=np.int64))
    faiss.extract_index_ivf(index).ntotal += 5
    index.ntotal += 5
    faiss.write_index(index, str(sizes))
    refused(sizes, "list sizes sum to 1900 but the index says it holds 1905")


def test_slices_of_another_trained_index_are_refused(base, tmp_path):
    wd, x = base
    good = classic_slices(wd.trained, x, tmp_path / "ok", BOUNDS[:2])
    ivf = faiss.extract_index_ivf(faiss.read_index(str(wd.trained)))
    # same structure, other centroids
    moved = faiss.read_index(str(wd.trained))
    q = faiss.downcast_index(faiss.extract_index_ivf(moved).quantizer)
    c = q.reconstruct_n(0, ivf.nlist) + 0.5
    newq = faiss.IndexHNSWFlat(c.shape[1], 32)
    newq.add(c)
    mivf = faiss.extract_index_ivf(moved)
    mivf.quantizer = newq
    mivf.own_fields = False
    other_c = tmp_path / "other_centroids.trained"
    faiss.write_index(moved, str(other_c))
    bad = classic_slice(other_c, x, 4100, N, tmp_path / "otherc.index")
    with pytest.raises(IndexFileError, match="otherc.index: its coarse centroids differ"):
        adopt_vslices(good + [bad])
    # other encoder (code size), other nlist, other transform: vs the others and vs --trained
    for name, factory in [("sq4", "IVF32,SQ4"), ("nl16", "IVF16,SQ6"), ("pca", "PCA16,IVF32,SQ6")]:
        t = faiss.index_factory(D, factory)
        t.train(x[:3000])
        tpath = tmp_path / f"{name}.trained"
        faiss.write_index(t, str(tpath))
        bad = classic_slice(tpath, x, 4100, N, tmp_path / f"{name}.index")
        with pytest.raises(IndexFileError, match=f"{name}.index.*another trained index"):
            adopt_vslices(good + [bad])
        with pytest.raises(IndexFileError, match=f"{name}.index.*another trained index"):
            adopt_vslices([bad], wd.trained)
        assert no_manifests(good + [bad])
    with pytest.raises(IndexFileError, match="slice0.index.*another trained index"):
        adopt_vslices(good, tpath)  # the good slices against a foreign --trained


def test_slices_without_quantizer_need_trained(base, tmp_path):
    """Slices written with a placeholder quantizer (like this tool's) cannot prove
    their trained index by content: --trained is then required."""
    wd, x = base
    from distributed_ondisk.ondisk.indexfile import placeholder_quantizer

    paths = []
    for i, (a, b) in enumerate(BOUNDS):
        index = faiss.read_index(str(wd.trained))
        index.add_with_ids(x[a:b], np.arange(a, b, dtype=np.int64))
        with placeholder_quantizer(index):
            faiss.write_index(index, str(tmp_path / f"p{i}.index"))
        paths.append(tmp_path / f"p{i}.index")
    with pytest.raises(InputError, match="pass the trained index"):
        adopt_vslices(paths)
    assert adopt_vslices(paths, wd.trained) == paths
    outs = [tmp_path / f"h{j}.index" for j in range(2)]
    for j, out in enumerate(outs):
        merge_hslice(MergeJob([str(p) for p in paths], out, nslice=2, slice_no=j))
    assert_shards_equal_ram(outs, ram_reference(wd.trained, x))


def test_after_adoption_the_merge_checks_apply(base, tmp_path):
    wd, x = base
    slices = classic_slices(wd.trained, x, tmp_path / "c")
    adopt_vslices(slices, wd.trained)
    before = [mf.manifest_path(s).read_bytes() for s in slices]
    assert adopt_vslices(slices) == []  # already adopted: kept as is
    assert [mf.manifest_path(s).read_bytes() for s in slices] == before
    lay = adopt_mod.inspect(slices[1]).layout
    flip_byte(slices[1], int(lay.offsets[0]) + 7)  # inside the first list's codes
    with pytest.raises(IndexFileError, match="slice1.index.*differs from its manifest"):
        merge_hslice(MergeJob([str(s) for s in slices], tmp_path / "h.index"))
    # a manifest is never rewritten: a file replaced after adoption is refused, with the
    # way through (the merge's block checksums catch flipped bits, as above)
    classic_slice(wd.trained, x, 2000, 4000, slices[1])
    with pytest.raises(IndexFileError, match=r"slice1.index.*remove slice1.index.manifest.json"):
        adopt_vslices(slices)
    assert [mf.manifest_path(s).read_bytes() for s in slices] == before


def test_read_only_folder_is_said_clearly(base, tmp_path, monkeypatch):
    wd, x = base
    slices = classic_slices(wd.trained, x, tmp_path / "ro", BOUNDS[:1])

    def erofs(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(adopt_mod, "_probe_write", erofs)
    with pytest.raises(OutputError, match=r"ro: the folder is not writable.*copy the slices"):
        adopt_vslices(slices)
    assert no_manifests(slices)


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into folders without write "
    "permission; the monkeypatched case above covers the message",
)
def test_read_only_folder_by_permissions(base, tmp_path):
    wd, x = base
    slices = classic_slices(wd.trained, x, tmp_path / "ro", BOUNDS[:1])
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            adopt_vslices(slices)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_adopt_only_then_the_documented_merge(base, tmp_path):
    """--adopt without --output only adopts; the plain merge command then works."""
    wd, x = base
    slices = classic_slices(wd.trained, x, tmp_path / "vs")
    r = run_script(
        "merge_to_ondisk.py", "--adopt", "--inputs", tmp_path / "vs", "--trained", wd.trained
    )
    assert r.returncode == 0, r.stderr
    assert not no_manifests(slices) and not list(tmp_path.glob("*.invlists"))
    outs = []
    for j in range(2):
        outs.append(tmp_path / f"h{j}.index")
        r = run_script(
            "merge_to_ondisk.py",
            "--inputs",
            tmp_path / "vs",
            "--nslice",
            "2",
            "--slice_no",
            str(j),
            "--output",
            outs[-1],
        )
        assert r.returncode == 0, r.stderr
    assert_shards_equal_ram(outs, ram_reference(wd.trained, x))
    bad = tmp_path / "vs" / "zz_garbage.index"
    bad.write_bytes(b"junk" * 64)
    r = run_script("merge_to_ondisk.py", "--adopt", "--inputs", tmp_path / "vs")
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr, r.stderr
