"""Session fixtures of the reliability suite: the small clustered data set and the
uninterrupted reference run of ``run_on_cluster.bash local_pipeline`` (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import OUTPUTS, D, N, Reference, checksums, run_pipeline

from distributed_ondisk.datasets import make_clustered
from distributed_ondisk.vectors import write_vectors


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reliability_data") / "base.fvecs"
    write_vectors(path, make_clustered(N, D, n_clusters=30, seed=5))
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data_file) -> Reference:
    root = tmp_path_factory.mktemp("reference") / "w"
    r = run_pipeline(root, data_file)
    assert r.returncode == 0, r.stderr[-4000:]
    ref = Reference(root, data_file, root / "rpc.secret", checksums(root))
    assert set(ref.checksums) == set(OUTPUTS)
    return ref
