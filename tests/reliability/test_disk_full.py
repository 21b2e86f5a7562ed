"""Disk full: each stage writes into a small tmpfs that fills up during its write.
The stage fails with a clear one-line error and a non-zero exit, leaves no
final-named output (nor temporaries), and the same command with space again
finishes with outputs identical to the uninterrupted run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from reliability_helpers import (
    NH,
    NV,
    SETTINGS,
    assert_nothing_half_written,
    checksums,
    run_stage,
    stage_command,
    temporaries,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (mounting needs root / CAP_SYS_ADMIN: skipped otherwise)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        check=False,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Leave only ``leave`` bytes free on ``fs``."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def assert_clear_disk_full_error(r: subprocess.CompletedProcess, out: Path) -> None:
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert last.startswith("error:"), r.stderr[-3000:]
    assert "No space left on device" in last, last
    assert out.name in last or out.stem in last, last


# stage, (inputs from the reference), output names relative to the stage's out dir,
# bytes left free (less than the stage writes)
CASES = {
    "trained": (["centroids.npy"], ["trained.index"], 4096),
    "vslice": (["trained.index"], [f"vslice_0001_of_{NV:04d}.index"], 8192),
    "hslice": (
        ["trained.index", *[f"vslices/vslice_{i:04d}_of_{NV:04d}.index" for i in range(NV)]],
        [f"hslice_0000_of_{NH:04d}.index", f"hslice_0000_of_{NH:04d}.invlists"],
        16384,
    ),
    # room for exactly the lists file: the disk fills while the small index file is
    # written (faiss's own writer would only print that and leave a 0-byte index)
    "hslice_index": (
        [],
        [f"hslice_0000_of_{NH:04d}.index", f"hslice_0000_of_{NH:04d}.invlists"],
        -1,
    ),
}


def command_into(stage: str, ref_root: Path, fs: Path) -> list[str]:
    """The stage's command reading the reference's inputs, writing into ``fs``."""
    cmd = stage_command(ref_root, stage, 1 if stage == "vslice" else 0)
    flag = {"trained": "--out", "vslice": "-o", "hslice": "--output"}[stage]
    i = cmd.index(flag)
    cmd[i + 1] = str(fs / Path(cmd[i + 1]).name)
    return cmd


@pytest.mark.parametrize("stage", list(CASES))
def test_stage_on_a_full_disk_fails_cleanly_and_reruns(reference, small_fs, stage):
    _inputs, outputs, leave = CASES[stage]
    if leave < 0:  # whole pages for the lists file, nothing more
        page = os.statvfs(small_fs).f_frsize
        leave = -(-(reference.root / "hslices" / outputs[1]).stat().st_size // page) * page
    stage = stage.split("_")[0]
    cmd = command_into(stage, reference.root, small_fs)
    filler = fill(small_fs, leave)
    r = run_stage(cmd)
    assert_clear_disk_full_error(r, small_fs / outputs[0])
    # No temporaries, no manifest; a file already committed before the disk filled
    # (the shard's lists, written before the index that names them) is complete.
    ref_dir = {"trained": "", "vslice": "vslices/", "hslice": "hslices/"}[stage]
    left = sorted(p.name for p in small_fs.iterdir() if p != filler)
    assert set(left) <= set(outputs[1:]), f"a failed write left {left}"
    assert checksums(small_fs, left) == {o: reference.checksums[ref_dir + o] for o in left}
    filler.unlink()
    r = run_stage(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert checksums(small_fs, outputs) == {o: reference.checksums[ref_dir + o] for o in outputs}
    assert_nothing_half_written(small_fs)
    assert temporaries(small_fs) == []


def test_kmeans_on_a_full_disk_fails_cleanly_and_reruns(reference, small_fs):
    """In-process k-means (same data, k, seed) with its centroids and checkpoint on the
    full disk: the checkpoint write fails at once, named; with space it finishes."""
    out, ckpt = small_fs / "centroids.npy", small_fs / "kmeans.checkpoint.npz"
    cmd = [
        "distributed_kmeans.py",
        "--indata",
        str(reference.root / "data.fvecs"),
        "--k",
        SETTINGS["K"],
        "--niter",
        SETTINGS["NITER"],
        "--seed",
        SETTINGS["SEED"],
        "--gpu",
        "-2",
        "--nt",
        "1",
        "--out",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--resume",
    ]
    filler = fill(small_fs, 0)
    r = run_stage(cmd)
    assert_clear_disk_full_error(r, ckpt)
    assert sorted(p.name for p in small_fs.iterdir() if p != filler) == []
    filler.unlink()
    r = run_stage(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_nothing_half_written(small_fs)
    assert temporaries(small_fs) == []
    assert out.with_name(out.name + ".manifest.json").exists()
