"""Every input the build stages must refuse: a clear error naming the file, a
non-zero exit from the scripts, and nothing left under the final name."""

from __future__ import annotations

import shutil

import faiss
import numpy as np
import pytest
from build_helpers import build_all, copy_vslice, flip_byte, make_workdir, run_script

from distributed_ondisk.errors import IndexFileError, InputError, VectorFileError
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.schema import Counts, VsliceManifest
from distributed_ondisk.ondisk.vslice import read_layout, region_checksums
from distributed_ondisk.stages.merge import MergeJob, merge_hslice
from distributed_ondisk.stages.train import (
    TrainedIndexConfig,
    build_trained_index,
    make_trained_index,
)
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd, x = make_workdir(tmp_path_factory.mktemp("wd"), n=8000, k=32)
    build_all(wd, nv=2, nh=1)
    return wd, x


def no_output(out):
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return not out.exists() and not out.with_suffix(".invlists").exists() and not leftovers


def merge(inputs, out, **kw):
    return merge_hslice(MergeJob([str(p) for p in inputs], out, **kw))


# ---- trained index -------------------------------------------------------------------------


def test_trained_refuses_dimension_mismatch(built, tmp_path):
    wd, _ = built
    np.save(tmp_path / "c.npy", np.zeros((16, 31), np.float32))
    with pytest.raises(InputError, match="dimension 31.*32"):
        make_trained_index(tmp_path / "c.npy", wd.data(), tmp_path / "t.index")
    assert no_output(tmp_path / "t.index")


def test_trained_refuses_nan_centroids(built, tmp_path):
    wd, _ = built
    c = np.load(wd.centroids)
    c[5, 3] = np.nan
    np.save(tmp_path / "c.npy", c)
    with pytest.raises(VectorFileError, match="centroid 5"):
        make_trained_index(tmp_path / "c.npy", wd.data(), tmp_path / "t.index")


def test_trained_refuses_more_centroids_than_rows_and_bad_encoders(built, tmp_path):
    wd, _ = built
    np.save(tmp_path / "c.npy", np.random.rand(9000, 32).astype(np.float32))
    with pytest.raises(InputError, match="9000 centroids"):
        make_trained_index(tmp_path / "c.npy", wd.data(), tmp_path / "t.index")
    for enc in ("SQ7", "PQ5", "PQ"):
        with pytest.raises(InputError):
            build_trained_index(
                np.load(wd.centroids),
                np.random.rand(1000, 32).astype("f4"),
                TrainedIndexConfig(encoder=enc),
            )
    with pytest.raises(InputError, match="needs at least 256"):
        build_trained_index(
            np.load(wd.centroids),
            np.random.rand(100, 32).astype("f4"),
            TrainedIndexConfig(encoder="PQ8"),
        )


def test_trained_refuses_rewritten_file(built, tmp_path):
    wd, _ = built
    shutil.copy(wd.trained, tmp_path / "t.index")
    shutil.copy(mf.manifest_path(wd.trained), mf.manifest_path(tmp_path / "t.index"))
    idx = faiss.read_index(str(wd.trained))
    faiss.extract_index_ivf(idx).nprobe = 7
    faiss.write_index(idx, str(tmp_path / "t.index"))
    with pytest.raises(IndexFileError, match="differs from its manifest"):
        make_vslice(VsliceJob(tmp_path / "t.index", wd.data(), tmp_path / "v.index"))


# ---- vslice --------------------------------------------------------------------------------


def test_vslice_refuses_bad_ranges_and_nonempty_trained(built, tmp_path):
    wd, _ = built
    out = tmp_path / "v.index"
    with pytest.raises(InputError, match="outside"):
        make_vslice(VsliceJob(wd.trained, wd.data(), out, i0=0, i1=8001))
    with pytest.raises(InputError, match="not both"):
        make_vslice(VsliceJob(wd.trained, wd.data(), out, i0=0, nslice=2, slice_no=0))
    with pytest.raises(InputError, match="slice_no"):
        make_vslice(VsliceJob(wd.trained, wd.data(), out, nslice=2, slice_no=2))
    with pytest.raises(IndexFileError, match="manifest says it is a 'vslice'"):
        make_vslice(VsliceJob(wd.vslice(0, 2), wd.data(), out))
    shutil.copy(wd.vslice(0, 2), tmp_path / "filled.index")  # same without its manifest
    with pytest.raises(IndexFileError, match="filled.index: trained index must be empty"):
        make_vslice(VsliceJob(tmp_path / "filled.index", wd.data(), out))
    np.save(tmp_path / "d.npy", np.zeros((100, 16), np.float32))
    with pytest.raises(InputError, match="dimension"):
        make_vslice(VsliceJob(wd.trained, tmp_path / "d.npy", out))
    assert no_output(out)


def test_vslice_refuses_reuse_with_other_parameters(built, tmp_path):
    wd, _ = built
    out = tmp_path / "v.index"
    make_vslice(VsliceJob(wd.trained, wd.data(), out, i0=0, i1=100))
    with pytest.raises(IndexFileError, match="other parameters"):
        make_vslice(VsliceJob(wd.trained, wd.data(), out, i0=0, i1=200))


# ---- merge ---------------------------------------------------------------------------------


def test_merge_refuses_missing_input(built, tmp_path):
    wd, _ = built
    out = tmp_path / "h.index"
    for bad in [tmp_path / "nope.index", tmp_path / "nothing*.index"]:
        with pytest.raises(IndexFileError, match="nope.index|nothing"):
            merge([wd.vslice(0, 2), bad], out)
    assert no_output(out)


def test_merge_refuses_unreadable_and_truncated_inputs(built, tmp_path):
    wd, _ = built
    bad = tmp_path / "bad.index"
    bad.write_bytes(b"not an index at all")
    out = tmp_path / "h.index"
    with pytest.raises(IndexFileError, match="bad.index.*no manifest"):
        merge([wd.vslice(0, 2), bad], out)
    shutil.copy(mf.manifest_path(wd.vslice(1, 2)), mf.manifest_path(bad))
    with pytest.raises(IndexFileError, match="bad.index.*bytes"):
        merge([wd.vslice(0, 2), bad], out)
    data = wd.vslice(1, 2).read_bytes()
    bad.write_bytes(data[:1000] + b"\xff" * 8 + data[1008:])  # header garbage, same size
    with pytest.raises(IndexFileError, match="bad.index"):
        merge([wd.vslice(0, 2), bad], out)
    assert no_output(out)


def test_merge_refuses_corrupted_list_data(built, tmp_path):
    wd, _ = built
    bad = copy_vslice(wd.vslice(1, 2), tmp_path / "v1.index")
    flip_byte(bad, int(read_layout(bad).offsets[20]) + 3)
    out = tmp_path / "h.index"
    with pytest.raises(IndexFileError, match="v1.index: list block.*corrupted"):
        merge([wd.vslice(0, 2), bad], out)
    assert no_output(out)


def test_merge_refuses_untrained_input(built, tmp_path):
    wd, _ = built
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatL2(32), 32, 32, faiss.ScalarQuantizer.QT_6bit
    )
    p = tmp_path / "untrained.index"
    faiss.write_index(ivf, str(p))
    lay = read_layout(p)
    fp = mf.load_manifest(wd.vslice(1, 2), VsliceManifest).trained_fingerprint
    m = VsliceManifest(
        params={},
        trained_fingerprint=fp,
        structure=lay.structure,
        rows=0,
        id_range=(8000, 8001),
        list_sizes=Counts.of(lay.sizes),
        regions=region_checksums(lay),
        quantizer="placeholder",
        data=None,
    )
    mf.write_manifest(p, m, {"index": p})
    with pytest.raises(IndexFileError, match="untrained.index: index is not trained"):
        merge([wd.vslice(0, 2), p], tmp_path / "h.index")


def test_merge_refuses_slices_of_another_trained_index(built, tmp_path):
    wd, _ = built
    other = tmp_path / "other"
    wd2, _ = make_workdir(other, n=8000, k=32, cfg=TrainedIndexConfig(seed=99))
    make_vslice(VsliceJob(wd2.trained, wd2.data(), wd2.vslice(1, 2), nslice=2, slice_no=1))
    out = tmp_path / "h.index"
    with pytest.raises(
        IndexFileError, match="vslice_0001_of_0002.index was built from a different"
    ):
        merge([wd.vslice(0, 2), wd2.vslice(1, 2)], out)
    with pytest.raises(IndexFileError, match="different trained index than the given"):
        merge([wd.vslice(0, 2), wd.vslice(1, 2)], out, trained=wd2.trained)
    assert no_output(out)


def test_merge_refuses_overlapping_id_ranges(built, tmp_path):
    wd, _ = built
    ov = tmp_path / "overlap.index"
    make_vslice(VsliceJob(wd.trained, wd.data(), ov, i0=3000, i1=5000))
    out = tmp_path / "h.index"
    with pytest.raises(IndexFileError, match="overlap.*vslice_0000_of_0002.*overlap.index"):
        merge([wd.vslice(0, 2), wd.vslice(1, 2), ov], out)
    with pytest.raises(InputError, match="given twice"):
        merge([wd.vslice(0, 2), wd.vslice(0, 2)], out)
    assert no_output(out)


def test_scripts_exit_nonzero_with_one_line_error(built, tmp_path):
    wd, _ = built
    out = tmp_path / "h.index"
    r = run_script(
        "merge_to_ondisk.py",
        "--inputs",
        wd.vslice(0, 2),
        tmp_path / "missing.index",
        "--output",
        out,
    )
    assert r.returncode == 2 and "error:" in r.stderr and "missing.index" in r.stderr
    assert "Traceback" not in r.stderr and no_output(out)
    r = run_script(
        "make_index_vslice.py",
        "--inputindex",
        tmp_path / "none.index",
        "--input",
        wd.data(),
        "-o",
        tmp_path / "v.index",
    )
    assert r.returncode == 2 and "none.index" in r.stderr
    r = run_script(
        "make_trained_index.py",
        "--centroids",
        wd.centroids,
        "--indata",
        wd.data(),
        "--out",
        tmp_path / "t.index",
        "--sq",
        "SQ3",
    )
    assert r.returncode == 2 and "SQ3" in r.stderr
