"""Killed builds resume: no file under a final name in between, identical bytes after
the rerun, stale temporaries removed; and the merge's memory does not grow with data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from build_helpers import REPO, build_all, make_workdir

from distributed_ondisk.stages.merge import MergeJob, merge_hslice

KILL_ON_WRITE = """
import os, signal, faiss
real = faiss.write_index
def killing(index, dest, *flags):
    real(index, dest, *flags)
    if not isinstance(dest, faiss.VectorIOWriter):   # not serialize_index: a file
        os.kill(os.getpid(), signal.SIGKILL)   # temp file written, rename not done
faiss.write_index = killing
"""


def driver(code: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd, x = make_workdir(tmp_path_factory.mktemp("wd"), n=8000, k=32)
    build_all(wd, nv=2, nh=2)
    return wd, x


def temporaries(d):
    return [p for p in d.iterdir() if ".tmp-" in p.name]


def test_vslice_killed_while_writing_resumes_to_identical_bytes(built, tmp_path):
    wd, _ = built
    out = tmp_path / "v.index"
    r = driver(KILL_ON_WRITE + f"""
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
make_vslice(VsliceJob({str(wd.trained)!r}, {str(wd.data())!r}, {str(out)!r}, nslice=2, slice_no=1))
""")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and temporaries(tmp_path)
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "make_index_vslice.py"),
            "--inputindex",
            str(wd.trained),
            "--input",
            str(wd.data()),
            "--nslice",
            "2",
            "--slice_no",
            "1",
            "-o",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == wd.vslice(1, 2).read_bytes()
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("when", [0.2, 0.6, 1.2])
def test_vslice_killed_at_any_time_leaves_nothing_half_written(built, tmp_path, when):
    wd, _ = built
    out = tmp_path / "v.index"
    cmd = [
        sys.executable,
        str(REPO / "make_index_vslice.py"),
        "--inputindex",
        str(wd.trained),
        "--input",
        str(wd.data()),
        "--i0",
        "0",
        "--i1",
        "8000",
        "--bs",
        "20",
        "-o",
        str(out),
        "--nt",
        "1",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=when)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    if out.exists():  # finished before the kill: must be complete
        from distributed_ondisk.ondisk.manifest import verify_manifest

        verify_manifest(out, "vslice")
    assert subprocess.run(cmd, check=False, capture_output=True).returncode == 0
    ref = tmp_path / "ref.index"
    subprocess.run(cmd[:-4] + ["-o", str(ref), "--bs", "5000"], check=True, capture_output=True)
    assert out.read_bytes() == ref.read_bytes()
    assert not temporaries(tmp_path)


@pytest.mark.parametrize("stage", ["lists", "index"])
def test_merge_killed_resumes_to_identical_bytes(built, tmp_path, stage):
    wd, _ = built
    out = tmp_path / "h.index"
    kill = (
        KILL_ON_WRITE
        if stage == "index"
        else """
import os, signal
import distributed_ondisk.stages.listcopy as M
real = M._gather
calls = []
def killing(*a):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)   # in the middle of writing the lists file
    return real(*a)
M._gather = killing
"""
    )
    r = driver(kill + f"""
from distributed_ondisk.stages.merge import MergeJob, merge_hslice
merge_hslice(MergeJob([{str(wd.vslice_dir)!r}], __import__('pathlib').Path({str(out)!r}),
                      nslice=2, slice_no=0, batch_bytes=20000))
""")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    assert out.with_suffix(".invlists").exists() == (stage == "index")
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "merge_to_ondisk.py"),
            "--inputs",
            str(wd.vslice_dir),
            "--nslice",
            "2",
            "--slice_no",
            "0",
            "--output",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref" / "h.index"  # same file names, so same index bytes
    merge_hslice(MergeJob([str(wd.vslice_dir)], ref, nslice=2, slice_no=0))
    assert out.read_bytes() == ref.read_bytes()
    assert out.with_suffix(".invlists").read_bytes() == wd.hslice_invlists(0, 2).read_bytes()
    assert not temporaries(tmp_path)


MEASURE = """
import json, sys
from pathlib import Path
from distributed_ondisk.stages.merge import MergeJob, merge_hslice
merge_hslice(MergeJob([sys.argv[1]], Path(sys.argv[2]), threads=2, batch_bytes=4 << 20))
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec (the big test process's peak)
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps(int(hwm) * 1024))
"""


@pytest.mark.slow
def test_merge_peak_rss_does_not_grow_with_data(tmp_path):
    from distributed_ondisk.stages.train import TrainedIndexConfig

    cfg = TrainedIndexConfig(rotation="none", encoder="SQ8")
    peaks, sizes = [], []
    for n in (120_000, 1_200_000):
        wd, _ = make_workdir(tmp_path / str(n), n=n, d=64, k=64, cfg=cfg)
        build_all(wd, nv=3, nh=0)
        out = wd.hslice(0, 1)
        r = subprocess.run(
            [sys.executable, "-c", MEASURE, str(wd.vslice_dir), str(out)],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(
                os.environ,
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            ),
        )
        assert r.returncode == 0, r.stderr
        peaks.append(json.loads(r.stdout.strip().splitlines()[-1]))
        sizes.append(out.with_suffix(".invlists").stat().st_size)
    assert sizes[1] - sizes[0] > 70e6  # a merge holding its data would grow by this
    assert peaks[1] - peaks[0] < 50e6, f"peak RSS {peaks} for lists files of {sizes} bytes"
