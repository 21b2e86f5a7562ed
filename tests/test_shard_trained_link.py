"""Shards lead to their trained index: the merge records it in the shard manifest (path
relative to the shard, absolute path, fingerprint), the search follows the record
wherever the files were put, --trained overrides it (checked), and a trained index that
cannot be found, or a missing shard, is named with what was tried / which shard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from build_helpers import clustered, run_script
from test_search_support import ServerProcess, build_shards

from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.trained import file_fingerprint
from distributed_ondisk.search.client import DistributedSearchClient
from distributed_ondisk.search.combined import CombinedIndex
from distributed_ondisk.stages.merge import MergeJob, merge_hslice


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd, _ = build_shards(tmp_path_factory.mktemp("link_wd"), nh=(3,), n=6000, d=16, k=32)
    q = clustered(50, 16, seed=9)
    ref = CombinedIndex(wd.hslices(3)).search(q, 10, nprobe=8)
    return wd, q, ref


def copy_shards(wd, dst: Path, which=(0, 1, 2)) -> list[Path]:
    """Shards copied as `cp` would (with their lists files and manifests)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for j in which:
        h = wd.hslice(j, 3)
        for p in (h, wd.hslice_invlists(j, 3), mf.manifest_path(h)):
            shutil.copy(p, dst / p.name)
        out.append(dst / h.name)
    return out


def copy_trained(wd, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(wd.trained, dst)
    return dst


def assert_same(ci, built):
    _, q, (D0, I0) = built
    D1, I1 = ci.search(q, 10, nprobe=8)
    np.testing.assert_array_equal(I1, I0)
    np.testing.assert_array_equal(D1, D0)


def test_shard_manifest_records_the_trained_index_and_its_split(built):
    wd, _, _ = built
    doc = mf.load_manifest(wd.hslice(1, 3), "hslice")
    assert doc["trained_index"] == {
        "path": "../trained.index",
        "absolute": str(wd.trained),
        "fingerprint": file_fingerprint(wd.trained),
    }
    assert doc["trained_fingerprint"] == file_fingerprint(wd.trained)
    assert doc["hslice"] == {"no": 1, "of": 3} and doc["nlist"] == 32
    assert "trained_index" not in doc["params"]  # moving it keeps the shard complete


def test_shards_moved_alone_follow_the_absolute_record(built, tmp_path):
    wd, _, _ = built
    files = copy_shards(wd, tmp_path / "somewhere" / "deep" / "shards")
    assert_same(CombinedIndex(files), built)
    assert_same(CombinedIndex(files[0].parent), built)


def test_tree_moved_together_follows_the_relative_record(built, tmp_path):
    """Trained index named and placed as the user likes, given to the merge; then the
    whole tree moved (the absolute path now points nowhere): the relative path leads."""
    wd, _, _ = built
    t = copy_trained(wd, tmp_path / "m" / "models" / "ivf.trained")
    for j in range(3):
        merge_hslice(
            MergeJob(
                [str(wd.vslice_dir)],
                tmp_path / "m" / "shards" / f"part{j}.idx",
                nslice=3,
                slice_no=j,
                trained=t,
            )
        )
    doc = mf.load_manifest(tmp_path / "m" / "shards" / "part0.idx", "hslice")
    assert doc["trained_index"]["path"] == "../models/ivf.trained"
    shutil.move(str(tmp_path / "m"), str(tmp_path / "moved"))
    ci = CombinedIndex(tmp_path / "moved" / "shards")  # a directory: any shard names
    assert ci.trained_path == tmp_path / "moved" / "shards" / "../models/ivf.trained"
    assert_same(ci, built)


def test_trained_index_in_another_folder_with_explicit_trained(built, tmp_path):
    wd, _, _ = built
    files = copy_shards(wd, tmp_path / "shards")
    t = copy_trained(wd, tmp_path / "models" / "my_ivf.faiss")
    for f in files:
        m = mf.manifest_path(f)
        doc = json.loads(m.read_text())
        doc["trained_index"] = {
            "path": "nope.index",
            "absolute": "/nonexistent/t.index",
            "fingerprint": doc["trained_fingerprint"],
        }
        m.write_text(json.dumps(doc))
    assert_same(CombinedIndex(files, trained=t), built)


def test_absent_trained_index_says_where_it_looked_and_what_is_needed(built, tmp_path):
    wd, _, _ = built
    files = copy_shards(wd, tmp_path / "a" / "shards")
    (tmp_path / "a" / "trained.index").write_bytes(b"not an index")  # layout name, wrong file
    for f in files:
        m = mf.manifest_path(f)
        doc = json.loads(m.read_text())
        doc["trained_index"]["absolute"] = str(tmp_path / "gone" / "trained.index")
        m.write_text(json.dumps(doc))
    fp = file_fingerprint(wd.trained)
    with pytest.raises(IndexFileError) as e:
        CombinedIndex(files)
    msg = str(e.value)
    assert str(tmp_path / "gone" / "trained.index") in msg
    assert str(tmp_path / "a" / "shards" / ".." / "trained.index") in msg  # the record
    assert "another trained index" in msg
    assert fp in msg and "--trained" in msg and "cannot be searched without it" in msg
    qf = tmp_path / "q.npy"
    np.save(qf, built[1])
    r = run_script("combined_index.py", "--shards", files[0].parent, "--queries", qf)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot find the trained index" in r.stderr and fp in r.stderr
    r = run_script(
        "combined_index.py", "--shards", files[0].parent, "--queries", qf, "--trained", wd.trained
    )
    assert r.returncode == 0, r.stderr


def test_explicit_trained_of_another_build_is_refused(built, tmp_path):
    wd, _, _ = built
    other, _ = build_shards(tmp_path / "other", nh=(), n=3000, d=16, k=32, seed=5)
    with pytest.raises(IndexFileError, match=f"needs fingerprint {file_fingerprint(wd.trained)}"):
        CombinedIndex(wd.hslices(3), trained=other.trained)


def test_missing_shard_is_named_from_files_or_directory(built, tmp_path):
    wd, _, _ = built
    files = copy_shards(wd, tmp_path / "s", which=(0, 2))
    for arg in (files, files[0].parent):
        with pytest.raises(
            IndexFileError,
            match=r"lists \[10, 21\) of 32 are in no given shard \(missing "
            r"shard\(s\): h1 of 3, lists \[10, 21\)\)",
        ):
            CombinedIndex(arg)
    with pytest.raises(IndexFileError, match=r"h2 of 3, lists \[21, 32\)"):
        CombinedIndex(wd.hslices(3)[:2])


def test_script_searches_shards_moved_away_from_their_trained_index(built, tmp_path):
    wd, q, _ = built
    files = copy_shards(wd, tmp_path / "x" / "y")
    qf = tmp_path / "q.npy"
    np.save(qf, q)
    r = run_script(
        "combined_index.py",
        "--shards",
        files[0].parent,
        "--queries",
        qf,
        "--k",
        "10",
        "--nprobe",
        "1,4",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "6000 vectors in 3 shard(s)" in r.stdout
    r = run_script(
        "combined_index.py", "--shards", files[0], files[2], "--queries", qf, cwd=tmp_path
    )
    assert r.returncode == 2 and "h1 of 3, lists [10, 21)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_servers_follow_the_record_and_the_client_names_a_missing_shard(built, tmp_path):
    wd, q, (D0, I0) = built
    files = copy_shards(wd, tmp_path / "served")
    procs = [ServerProcess([files[0]], None), ServerProcess([files[1]], None)]
    try:
        for p in procs:
            p.wait(None)
        with pytest.raises(IndexFileError, match=r"h2 of 3, lists \[21, 32\)"):
            DistributedSearchClient([p.address for p in procs], secret=None)
        procs.append(ServerProcess([files[2]], None).wait(None))
        with DistributedSearchClient([p.address for p in procs], secret=None) as c:
            D1, I1 = c.search(q, 10, nprobe=8)
        np.testing.assert_array_equal(I1, I0)
        np.testing.assert_array_equal(D1, D0)
    finally:
        for p in procs:
            p.stop()


def test_merge_without_trained_follows_the_vslices_record(built, tmp_path):
    """Trained index named freely in its own folder, not given to the merge: the vslices'
    manifests lead the merge to it, and the shards then lead the search to it."""
    from distributed_ondisk.stages.vslice import VsliceJob, make_vslice

    wd, _, _ = built
    t = copy_trained(wd, tmp_path / "models" / "ivf.trained")
    vs = [tmp_path / "v" / f"v{i}.index" for i in range(2)]
    for i, v in enumerate(vs):
        make_vslice(VsliceJob(t, wd.data(), v, nslice=2, slice_no=i, threads=1))
    assert mf.load_manifest(vs[0], "vslice")["trained_index"]["path"] == "../models/ivf.trained"
    outs = [tmp_path / "s" / f"h{j}.index" for j in range(3)]
    for j, out in enumerate(outs):
        merge_hslice(MergeJob([str(tmp_path / "v")], out, nslice=3, slice_no=j))
    ci = CombinedIndex(tmp_path / "s")
    assert ci.trained_path.resolve() == t.resolve()
    assert_same(ci, built)
