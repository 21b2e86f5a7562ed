"""Installing: faiss-cpu and faiss-gpu are never used together (import refuses, naming
both), and a wheel installed into a fresh venv runs every stage without a checkout."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import distributed_ondisk

REPO = Path(__file__).resolve().parents[1]


def _dists(*names):
    return lambda: [SimpleNamespace(metadata={"Name": n}) for n in names]


def test_both_faiss_variants_refused(monkeypatch):
    monkeypatch.setattr(
        distributed_ondisk._metadata,
        "distributions",
        _dists("numpy", "faiss-cpu", "faiss_gpu_cu12"),
    )
    with pytest.raises(ImportError, match="faiss-cpu and faiss-gpu-cu12"):
        distributed_ondisk._check_single_faiss()


@pytest.mark.parametrize("names", [("faiss-cpu",), ("faiss-gpu",), ("numpy",)])
def test_one_variant_accepted(monkeypatch, names):
    monkeypatch.setattr(distributed_ondisk._metadata, "distributions", _dists(*names))
    distributed_ondisk._check_single_faiss()


@pytest.mark.parametrize(
    "variant,expected",
    [("", "faiss-cpu"), ("cpu", "faiss-cpu"), ("gpu", "faiss-gpu"), ("none", None)],
)
def test_setup_picks_one_faiss_wheel(variant, expected):
    env_code = (
        "import os, runpy, setuptools; setuptools.setup = lambda **kw: print(kw["
        "'install_requires']); runpy.run_path('setup.py')"
    )
    r = subprocess.run(
        [sys.executable, "-c", env_code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DISTRIBUTED_ONDISK_FAISS": variant},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    reqs = ast.literal_eval(r.stdout.strip())
    faiss = [q for q in reqs if q.startswith("faiss")]
    assert faiss == ([] if expected is None else [f"{expected}>=1.9"])


def test_setup_refuses_unknown_variant():
    code = (
        "import runpy, setuptools; setuptools.setup = lambda **kw: None; runpy.run_path('setup.py')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DISTRIBUTED_ONDISK_FAISS": "tpu"},
        timeout=60,
    )
    assert r.returncode != 0 and "expected one of cpu, gpu, none" in r.stderr


# -- the wheel, installed into a fresh venv, runs the pipeline without a checkout -----

#: pip's words when it could not reach the package index (then the test skips)
NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|ConnectTimeout|ReadTimeout|"
    r"ProxyError|Connection refused|No route to host|"
    # no version at all of a dependency as common as numpy: the index was not reached
    r"\(from versions: none\)"
)
#: what the wheel is built from (copied: building in the checkout would leave build/ there)
WHEEL_SOURCES = ("setup.py", "pyproject.toml", "distributed_ondisk")


def test_network_errors_are_recognised():
    refused = (
        "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) "
        "after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection."
        "HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] "
        "Connection refused')': /simple/numpy/"
    )
    assert NETWORK_ERRORS.search(refused)
    assert NETWORK_ERRORS.search(
        "ERROR: Could not find a version that satisfies the requirement numpy>=1.22 "
        "(from distributed-ondisk) (from versions: none)"
    )
    assert not NETWORK_ERRORS.search("error: invalid command 'bdist_wheel'")


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment a user of the installed wheel has: its venv first on PATH, no
    PYTHONPATH (nothing from the checkout), no variant or secret settings of ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not k.startswith("DISTRIBUTED_ONDISK_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["OMP_NUM_THREADS"] = "2"  # the machine is shared with the other tests
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """A wheel built from REPO, installed with its dependencies into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in WHEEL_SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(p, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTED_ONDISK_")}
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root)]
    if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
        wheel_cmd.append("--no-build-isolation")  # nothing to download to build it
    r = subprocess.run(
        [*wheel_cmd, str(src)], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    if r.returncode != 0 and NETWORK_ERRORS.search(r.stderr):
        pytest.skip(f"cannot reach the package index to build the wheel: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = root.glob("distributed_ondisk-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=False,
        capture_output=True,
        text=True,
        env=_clean_env(venv),
        timeout=900,
    )
    if r.returncode != 0 and NETWORK_ERRORS.search(r.stderr):
        pytest.skip(
            f"cannot reach the package index to install the dependencies: {r.stderr[-300:]}"
        )
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(venv=venv, env=_clean_env(venv), root=root)


def _tool(installed: SimpleNamespace, cwd: Path, command: str, timeout: float = 300):
    """``distributed-ondisk COMMAND`` (split like a shell line) from the venv, in ``cwd``."""
    r = subprocess.run(
        [str(installed.venv / "bin" / "distributed-ondisk"), *shlex.split(command)],
        check=False,
        cwd=cwd,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, (command, r.stderr[-3000:])
    return r


def _clustered_npy(folder: Path, n: int = 3000, nq: int = 100, d: int = 16) -> None:
    rs = np.random.RandomState(0)
    centers = rs.randn(40, d) * 3
    x = (centers[rs.randint(40, size=n + nq)] + rs.randn(n + nq, d)).astype(np.float32)
    np.save(folder / "x.npy", x[:n])
    np.save(folder / "q.npy", x[n:])  # held out: queries that are not indexed


@pytest.mark.slow
@pytest.mark.integration
def test_installed_wheel_runs_every_stage_without_a_checkout(installed, tmp_path):
    work = tmp_path / "empty"  # no checkout here or above: cwd is a fresh folder
    work.mkdir()
    r = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import distributed_ondisk as d; print(d.__file__)",
        ],
        check=False,
        cwd=work,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(installed.venv), r
    from distributed_ondisk.__main__ import SUBCOMMANDS

    listed = _tool(installed, work, "--help").stdout
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in listed, name
    _clustered_npy(work)
    _tool(installed, work, "kmeans --indata x.npy --k 16 --out centroids.npy")
    _tool(installed, work, "train --centroids centroids.npy --indata x.npy -o t.index")
    for i in range(2):
        out = f"vslices/vslice_{i:04d}_of_0002.index"
        _tool(
            installed,
            work,
            f"vslice --inputindex t.index --input x.npy --nslice 2 --slice_no {i} -o {out}",
        )
    for i in range(2):  # each shard takes its lists from both slices
        shard = f"hslices/hslice_{i:04d}_of_0002.index"
        _tool(installed, work, f"merge --inputs vslices --nslice 2 --slice_no {i} --output {shard}")
    for name in ("centroids.npy", "t.index", out, shard):
        assert (work / name).is_file() and (work / f"{name}.manifest.json").is_file(), name
    # served shards too: rpc keygen, serve (one server for both shards), search over it
    _tool(installed, work, "rpc keygen secret")
    with open(work / "serve.log", "w") as log:
        server = subprocess.Popen(
            [
                str(installed.venv / "bin" / "distributed-ondisk"),
                *shlex.split("serve --shards hslices --secret-file secret --when_ready ready"),
            ],
            cwd=work,
            env=installed.env,
            stdout=log,
            stderr=log,
        )
    try:
        address = _wait_for(work / "ready", server)
        _tool(installed, work, f"rpc ping {address} --timeout 60 --secret-file secret")
        r = _tool(
            installed,
            work,
            "search --shards hslices --queries q.npy --database x.npy --nprobe 1,16 --in-ram "
            f"--json report.json --servers {address} --secret-file secret",
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "3000 vectors in 2 shard(s), nlist 16, 100 queries" in r.stdout
    points = json.loads((work / "report.json").read_text())
    by = {(p["variant"], p["nprobe"]): p for p in points}
    assert set(by) == {(v, n) for v in ("in-RAM", "on-disk", "distributed") for n in (1, 16)}
    full = by[("on-disk", 16)]
    assert full["recall"]["10"] >= 0.9 and full["recall_10_at_10"] >= 0.8, full
    assert full["recall"] == by[("distributed", 16)]["recall"] == by[("in-RAM", 16)]["recall"]
    assert by[("on-disk", 1)]["recall"]["10"] <= full["recall"]["10"]


@pytest.mark.slow
@pytest.mark.integration
def test_installed_wheel_runs_the_local_pipeline(installed, tmp_path):
    """``distributed-ondisk pipeline``: every stage, as processes of the installed
    toolkit (k-means and search servers included), from a folder with no checkout."""
    work = tmp_path / "empty"
    work.mkdir()
    if subprocess.run(
        [str(installed.venv / "bin" / "distributed-ondisk"), "pipeline", "--help"],
        check=False,
        cwd=work,
        env=installed.env,
        capture_output=True,
        timeout=120,
    ).returncode:
        pytest.skip("this build has no pipeline subcommand (distributed_ondisk.launch.cli)")
    _clustered_npy(work)
    _tool(
        installed,
        work,
        "pipeline --data x.npy --workdir w --k 16 --niter 5 --nq 100 --train_rows 3000 "
        "--kmeans_servers 2 --nvslices 2 --nhslices 2 --search_servers 1 --nprobe 1,16",
        timeout=600,
    )
    report = json.loads((work / "w" / "report.json").read_text())
    full = [p for p in report["search"] if p["nprobe"] == 16]
    assert {p["variant"] for p in full} == {"in-RAM", "on-disk", "distributed"}
    # the queries are sampled indexed rows: 1-recall is trivially high, 10-R@10 is not
    assert all(p["recall_at_10"] >= 0.9 and p["10_recall_at_10"] >= 0.8 for p in full), full


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The HOST:PORT a server wrote once ready (or its stderr if it died first)."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            log = (path.parent / "serve.log").read_text()[-2000:]
            raise AssertionError(f"server exited {proc.returncode}: {log}")
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.1)
    return path.read_text().strip()
