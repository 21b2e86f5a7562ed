"""faiss-cpu and faiss-gpu must never be used together: import refuses, naming both."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
