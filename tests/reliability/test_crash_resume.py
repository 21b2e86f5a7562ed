"""Crash at any point, rerun, same result.

Every stage is SIGKILLed at deterministic points (crashpoint.py): before it does
anything, while its final output is written (temporary written, not yet
fsync'ed nor renamed), just before and just after the renames that commit its
outputs, and for servers when an RPC call arrives mid-run.  After each crash no
final name holds a half-written file (every manifest verifies), and running the
same command again gives outputs byte-identical to the uninterrupted reference
run of local_pipeline, with no temporary left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    CRASHPOINT,
    NH,
    NV,
    Reference,
    assert_nothing_half_written,
    checksums,
    killed,
    kmeans_server,
    queries,
    run_pipeline,
    run_stage,
    search_server,
    seed_workdir,
    servers,
    sha,
    stage_command,
    temporaries,
)

from distributed_ondisk.errors import RPCError
from distributed_ondisk.search.client import DistributedSearchClient
from distributed_ondisk.search.combined import CombinedIndex

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VSL = [f"vslices/vslice_{i:04d}_of_{NV:04d}.index" for i in range(NV)]
HSL = [f"hslices/hslice_{j:04d}_of_{NH:04d}.{e}" for j in range(NH) for e in ("index", "invlists")]
# stage -> (its inputs from the reference run, its outputs, slice number)
STAGES = {
    "trained": (["centroids.npy"], ["trained.index"], 0),
    "vslice": (["trained.index"], [VSL[1]], 1),
    "hslice": (["trained.index", *VSL], HSL[:2], 0),
}


def trace_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def traces(reference: Reference, tmp_path_factory) -> dict[str, list[dict]]:
    """Each build stage run once, uninterrupted, in a fresh work dir with a trace of its
    commit points; also checks that the rerun in another directory is byte-identical."""
    out = {}
    for stage, (inputs, outputs, i) in STAGES.items():
        root = tmp_path_factory.mktemp(f"trace_{stage}")
        w = seed_workdir(reference, root / "w", inputs)
        r = run_stage(stage_command(w, stage, i), trace=root / "trace.jsonl")
        assert r.returncode == 0, r.stderr[-3000:]
        assert checksums(w, outputs) == {o: reference.checksums[o] for o in outputs}
        out[stage] = trace_events(root / "trace.jsonl")
        assert any(e["op"] == "replace" for e in out[stage]), out[stage]
    return out


def resolve(point: str, events: list[dict]) -> str:
    """A symbolic crash point made concrete from the stage's trace:
    'replace:last:before', 'replace:mid:after', 'fsync@centroids.npy' (the first fsync
    of that output's temporary), 'replace@centroids.npy:after' (its rename)."""
    head, *rest = point.split(":")
    if "@" in head:
        op, name = head.split("@")
        for e in events:
            base = os.path.basename(e["detail"])
            if e["op"] == op and (base == name or base.startswith(f".{name}.tmp-")):
                return ":".join([op, str(e["n"]), *rest])
        raise AssertionError(f"no {op} of {name} in the trace {events}")
    if rest and rest[0] in ("last", "mid"):
        n = sum(1 for e in events if e["op"] == head)
        rest[0] = str(n if rest[0] == "last" else (n + 1) // 2)
    return ":".join([head, *rest])


POINTS = [
    "start",
    "fsync:1",
    "replace:1:before",
    "replace:1:after",
    "replace:mid:after",
    "replace:last:before",
]


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("stage", list(STAGES))
def test_build_stage_killed_then_rerun_is_identical(reference, traces, tmp_path, stage, point):
    inputs, outputs, i = STAGES[stage]
    w = seed_workdir(reference, tmp_path / "w", inputs)
    cmd = stage_command(w, stage, i)
    at = resolve(point, traces[stage])
    r = run_stage(cmd, crash_at=at, once=tmp_path / "crashed")
    assert killed(r), f"{at}: rc {r.returncode}\n{r.stderr[-2000:]}"
    assert_nothing_half_written(w)
    r = run_stage(cmd, crash_at=at, once=tmp_path / "crashed")  # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert checksums(w, outputs) == {o: reference.checksums[o] for o in outputs}
    assert_nothing_half_written(w)
    assert temporaries(w) == [], "a rerun leaves no temporary of the crashed writer"


# ---------------------------------------------------------------- k-means client


@pytest.fixture(scope="module")
def kmeans_servers2(reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("km2")
    with servers(
        [kmeans_server(reference.root, s, 2, reference.secret_file, tmp) for s in range(2)]
    ) as procs:
        yield procs


@pytest.fixture(scope="module")
def kmeans_trace(reference, kmeans_servers2, tmp_path_factory) -> list[dict]:
    """One uninterrupted client run in a fresh work dir: its commit points, and the
    same centroids as the reference pipeline's."""
    root = tmp_path_factory.mktemp("trace_kmeans")
    w = seed_workdir(reference, root / "w", [])
    r = run_stage(
        stage_command(w, "kmeans_client", servers=[p.address for p in kmeans_servers2]),
        trace=root / "trace.jsonl",
        secret_file=reference.secret_file,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha(w / "centroids.npy") == reference.checksums["centroids.npy"]
    return trace_events(root / "trace.jsonl")


@pytest.mark.parametrize(
    "point",
    [
        "start",
        "replace@kmeans.checkpoint.npz:after",
        "replace:mid:before",
        "fsync@centroids.npy",
        "replace@centroids.npy:after",
        "replace@centroids.npy.manifest.json:before",
    ],
)
def test_kmeans_client_killed_then_resumed_is_identical(
    reference, kmeans_servers2, kmeans_trace, tmp_path, point
):
    addrs = [p.address for p in kmeans_servers2]
    w = seed_workdir(reference, tmp_path / "w", [])
    cmd = stage_command(w, "kmeans_client", servers=addrs)
    at = resolve(point, kmeans_trace)
    r = run_stage(cmd, crash_at=at, once=tmp_path / "crashed", secret_file=reference.secret_file)
    assert killed(r), f"{at}: rc {r.returncode}\n{r.stderr[-2000:]}"
    assert_nothing_half_written(w)
    assert not (w / "centroids.npy.manifest.json").exists()
    r = run_stage(cmd, secret_file=reference.secret_file)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha(w / "centroids.npy") == reference.checksums["centroids.npy"]
    assert_nothing_half_written(w)
    assert temporaries(w) == [], "a rerun leaves no temporary of the crashed writer"


# ---------------------------------------------------------------- k-means server (+ load: 4 servers, one restarted)


def test_kmeans_server_killed_mid_run_restarted_and_resumed_is_identical(reference, tmp_path):
    """4 local servers; one is SIGKILLed when a call arrives in the middle of the run.
    The client fails naming it; the server is restarted (new port), the client is run
    again with --resume from its checkpoint: the centroids equal an uninterrupted
    4-server run bit for bit."""
    sf = reference.secret_file
    (tmp_path / "v").mkdir()
    uninterrupted = seed_workdir(reference, tmp_path / "u", [])
    w = seed_workdir(reference, tmp_path / "w", [])
    others = [kmeans_server(reference.root, s, 4, sf, tmp_path) for s in range(3)]
    with servers(others):
        with servers([kmeans_server(reference.root, 3, 4, sf, tmp_path / "v")]) as (plain,):
            addrs = [p.address for p in others] + [plain.address]
            r = run_stage(
                stage_command(uninterrupted, "kmeans_client", servers=addrs), secret_file=sf
            )
            assert r.returncode == 0, r.stderr[-3000:]
        victim = kmeans_server(reference.root, 3, 4, sf, tmp_path / "v", crash_at="dispatch:8")
        with servers([victim]):
            addrs[3] = victim.address
            r = run_stage(stage_command(w, "kmeans_client", servers=addrs), secret_file=sf)
            assert r.returncode != 0
            assert victim.address in r.stderr, r.stderr[-2000:]
            assert victim.proc.wait(30) == -9
            assert (w / "kmeans.checkpoint.npz").exists(), "the crash is in the middle of the run"
            assert not (w / "centroids.npy").exists()
            assert_nothing_half_written(w)
            victim.crash_at = None
            victim.start()  # restarted: the resume path, with a new address
            addrs[3] = victim.address
            r = run_stage(stage_command(w, "kmeans_client", servers=addrs), secret_file=sf)
            assert r.returncode == 0, r.stderr[-3000:]
    assert checksums(w, ["centroids.npy"]) == checksums(uninterrupted, ["centroids.npy"])
    assert temporaries(w) == []


# ---------------------------------------------------------------- search server


@pytest.fixture(scope="module")
def expected_search(reference):
    q = queries()
    index = CombinedIndex([reference.root / h for h in HSL if h.endswith(".index")])
    return q, {nprobe: index.search(q, 10, nprobe=nprobe) for nprobe in (1, 8)}


def test_search_server_killed_at_start_while_publishing_and_mid_query(
    reference, tmp_path, expected_search
):
    sf, root = reference.secret_file, reference.root
    q, expected = expected_search
    # early: dies before listening; while writing its --when_ready file: no address
    # (not even a partial one) is ever published under the final name.
    for at in ("start", "fsync:1", "replace:1:before"):
        p = search_server(root, [0], sf, tmp_path, crash_at=at, tag=at.replace(":", "_"))
        with pytest.raises(RuntimeError, match="exited -9"):
            p.start(timeout=60)
        p.close()
        assert not p.ready_file.exists()
        assert temporaries(tmp_path) != [] or at == "start"
    # mid-query: the client's error names the dead server (or the result says partial)
    s0 = search_server(root, [0], sf, tmp_path)
    s1 = search_server(root, [1], sf, tmp_path, crash_at="dispatch:2", tag="victim")
    with servers([s0, s1]):
        with DistributedSearchClient(
            [s0.address, s1.address], secret=reference.secret, trained=str(root / "trained.index")
        ) as c:
            res = None
            try:
                for _ in range(3):
                    res = c.search(q, 10, nprobe=8)
                    if res.partial:
                        break
            except RPCError as e:
                assert s1.address in str(e)
            else:
                assert res is not None and res.partial and res.failed_servers == [s1.address]
        assert s1.proc.wait(30) == -9  # it was the one that died
        s1.crash_at = None
        s1.start()  # the same command again
        with DistributedSearchClient([s0.address, s1.address], secret=reference.secret) as c:
            for nprobe, (D0, I0) in expected.items():
                res = c.search(q, 10, nprobe=nprobe)
                assert not res.partial
                np.testing.assert_array_equal(res.I, I0)
                np.testing.assert_array_equal(res.D, D0)


# ---------------------------------------------------------------- the whole pipeline


def test_local_pipeline_kmeans_server_killed_then_rerun_is_identical(reference, tmp_path):
    """run_on_cluster.bash local_pipeline with a k-means server SIGKILLed mid-run:
    the pipeline fails and stops its other servers; the same command again resumes
    and every final shard, and the search report, equal the uninterrupted run's."""
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'case " $* " in *" --server "*) exec {sys.executable} {CRASHPOINT} "$@";; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    w = tmp_path / "w"
    extra = {"PYTHON": str(wrapper), "CRASH_AT": "dispatch:8", "CRASH_ONCE": str(tmp_path / "once")}
    r = run_pipeline(w, reference.data, **extra)
    assert r.returncode != 0
    assert (tmp_path / "once").exists(), r.stderr[-3000:]
    assert not (w / "centroids.npy.manifest.json").exists()
    assert_nothing_half_written(w)
    assert leftover_servers(w) == []
    r = run_pipeline(w, reference.data, **extra)
    assert r.returncode == 0, r.stderr[-4000:]
    assert checksums(w) == reference.checksums
    assert_nothing_half_written(w)
    assert leftover_servers(w) == []
    got = json.loads((w / "search_report.json").read_text())
    want = json.loads((reference.root / "search_report.json").read_text())
    assert [(p["variant"], p["nprobe"], p["recall"]) for p in got] == [
        (p["variant"], p["nprobe"], p["recall"]) for p in want
    ]


def leftover_servers(w: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], check=False, capture_output=True, text=True).stdout
    return [
        l
        for l in out.splitlines()
        if str(w) in l
        and any(s in l for s in ("--server", "search_server.py", "distributed_ondisk serve"))
    ]
