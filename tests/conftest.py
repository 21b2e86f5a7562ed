"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from distributed_ondisk.launch.slurm_cluster import (
    SlurmCluster,
    ensure_slurm_cluster,
    slurm_unavailable_reason,
)
from distributed_ondisk.rpc import Server, generate_secret
from distributed_ondisk.rpc.demo import EchoService


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """The single-node Slurm test cluster (started if needed; skipped, with the
    reason, where this machine cannot run it)."""
    reason = slurm_unavailable_reason()
    if reason is not None:
        pytest.skip(f"Slurm test cluster unavailable: {reason}")
    c = ensure_slurm_cluster()
    yield c
    c.stop()


@pytest.fixture
def secret() -> bytes:
    """A fresh RPC shared secret."""
    return generate_secret()


@pytest.fixture
def server(secret):
    """An authenticated echo RPC server on a free loopback port."""
    with Server(EchoService(), secret=secret) as srv:
        yield srv
