"""The cost model and `plan` command: bytes that match what the code sends, sizing
rules, flags, the CLI's speed and refusals, calibration files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.errors import InputError
from distributed_ondisk.kmeans.tree import TREE_MIN_SERVERS
from distributed_ondisk.plan.model import (
    RAM_USABLE,
    Cluster,
    Settings,
    Workload,
    code_size,
    make_plan,
    vslice_ram,
)
from distributed_ondisk.plan.rates import DEFAULT_RATES, load_rates, save_rates

REPO = Path(__file__).resolve().parents[1]
DEEP1B = Workload(n=10**9, d=96, nlist=10**6, n_train=50 * 10**6, niter=20)
NODES20 = Cluster(nodes=20, cores=40, gpus=4, ram_gb=100, disk_gb=2000, net_gbps=10)


def test_code_sizes_match_faiss():
    import faiss

    for enc, qt in (
        ("SQ6", faiss.ScalarQuantizer.QT_6bit),
        ("SQ8", faiss.ScalarQuantizer.QT_8bit),
        ("SQ4", faiss.ScalarQuantizer.QT_4bit),
        ("SQfp16", faiss.ScalarQuantizer.QT_fp16),
    ):
        for d in (24, 96, 100):
            assert code_size(enc, d) == faiss.IndexScalarQuantizer(d, qt).code_size, (enc, d)
    assert code_size("PQ16", 96) == 16 and code_size("PQ16x4", 96) == 8
    with pytest.raises(InputError, match="SQ5"):
        code_size("SQ5", 96)


def test_kmeans_bytes_are_what_the_rpc_code_sends():
    """Below the tree's threshold: client inbound per iteration = servers x the
    AssignResult message, outbound = servers x the centroids message (up to the small
    RPC headers).  From there on (the servers' reduction tree): one float32 reply in
    and the centroids once out, whatever the number of servers."""
    from distributed_ondisk.kmeans.base import AssignResult
    from distributed_ondisk.kmeans.remote import message_bytes

    k, d, servers, niter = 4096, 96, 7, 3
    w = Workload(n=10**7, d=d, nlist=k, niter=niter)
    s = make_plan(w, Cluster(nodes=servers, cores=8), Settings(kmeans_servers=servers)).stage(
        "k-means"
    )
    reply = message_bytes(AssignResult.empty(k, d))
    request = message_bytes(("assign_to", (np.zeros((k, d), np.float32), None), {}))
    assert s.net_in == pytest.approx(servers * niter * reply, rel=1e-3)
    assert s.net_out == pytest.approx(servers * niter * request, rel=1e-3)
    assert servers < TREE_MIN_SERVERS <= 2 * servers
    double = make_plan(w, Cluster(nodes=2 * servers, cores=8)).stage("k-means")
    tree_reply = message_bytes(AssignResult(np.zeros((k, d), np.float32), np.zeros(k), 0.0))
    assert double.net_in == pytest.approx(niter * tree_reply, rel=1e-3)
    assert double.net_in <= 1.1 * niter * reply
    assert double.net_out == pytest.approx(niter * request, rel=1e-3)


def test_deep1b_kmeans_is_flagged_network_bound_and_client_ram_counted():
    p = make_plan(DEEP1B, NODES20, Settings(kmeans_servers=20, nvslices=200, nhslices=50))
    km = p.stage("k-means")
    reply = 10**6 * 97 * 8
    # 20 servers reduce in a tree: the client holds one float32 reply, not 20 float64
    assert 10**6 * 96 * 4 <= km.ram_per_proc < 21 * reply
    assert km.net_in == pytest.approx(DEEP1B.niter * 10**6 * (96 * 4 + 8), rel=1e-3)
    assert any("network-bound" in f and "tree of 20 servers" in f for f in p.flags)
    assert p.bottleneck.name == "k-means"
    # below the tree's threshold the client holds every reply: on nodes with little
    # RAM it cannot, and the tree over more servers fits
    small_ram = Cluster(nodes=20, cores=40, gpus=4, ram_gb=8, disk_gb=2000)
    plain = make_plan(DEEP1B, small_ram, Settings(kmeans_servers=TREE_MIN_SERVERS - 1))
    assert any(f.startswith("CANNOT FIT: the k-means client") for f in plain.flags)
    chosen = make_plan(DEEP1B, small_ram)
    assert not any("k-means client" in f for f in chosen.flags)
    assert chosen.stage("k-means").wall_s < plain.stage("k-means").wall_s


def test_suggested_layout_fits_ram_and_disk():
    for n, ram, disk, nodes in ((10**9, 64, 500, 8), (10**10, 256, 4000, 50), (10**8, 32, 100, 3)):
        w = Workload(n=n, d=96, nlist=2**16)
        c = Cluster(nodes=nodes, cores=16, ram_gb=ram, disk_gb=disk)
        p = make_plan(w, c)
        st = p.settings
        assert vslice_ram(w, n / st.nvslices) <= RAM_USABLE * ram * 1e9
        assert st.nvslices % nodes == 0 and st.nhslices % st.search_servers == 0
        assert w.index_bytes / st.search_servers <= 0.9 * disk * 1e9
        assert not [f for f in p.flags if f.startswith("CANNOT FIT")], p.flags


def test_settings_that_cannot_fit_are_flagged():
    w = Workload(n=10**9, d=96, nlist=2**16)
    p = make_plan(
        w, Cluster(nodes=4, cores=16, ram_gb=64, disk_gb=50), Settings(nvslices=2, search_servers=1)
    )
    flags = "\n".join(p.flags)
    assert "CANNOT FIT: a vslice of 500,000,000 rows" in flags
    assert "per search server" in flags and "exceed the cluster's disks" in flags


def test_more_nodes_is_faster_and_more_probes_slower():
    w = Workload(n=10**9, d=96, nlist=2**16, nprobe=16)
    a = make_plan(w, Cluster(nodes=4, cores=32))
    b = make_plan(w, Cluster(nodes=16, cores=32))
    assert b.stage("vslices").wall_s < a.stage("vslices").wall_s
    slow = make_plan(Workload(n=10**9, d=96, nlist=2**16, nprobe=128), Cluster(nodes=4, cores=32))
    assert slow.stages[-1].wall_s > a.stages[-1].wall_s


def test_refusals_name_the_value():
    with pytest.raises(InputError, match="nlist=5000"):
        make_plan(Workload(n=1000, d=8, nlist=5000), Cluster())
    with pytest.raises(InputError, match="xvecs"):
        make_plan(Workload(n=10**6, d=8, nlist=100, fmt="xvecs"), Cluster())
    with pytest.raises(InputError, match="nvslices"):
        make_plan(Workload(n=10**6, d=8, nlist=100), Cluster(), Settings(nvslices=0))


def test_rates_file_roundtrip_and_refusals(tmp_path):
    p = tmp_path / "cal.json"
    save_rates(DEFAULT_RATES.replace(merge_mbps=123.0, source="test"), p)
    assert load_rates(p).merge_mbps == 123.0
    assert load_rates(tmp_path / "none.json") == DEFAULT_RATES
    p.write_text(json.dumps({"merge_mbps": -1}))
    with pytest.raises(InputError, match="merge_mbps"):
        load_rates(p)
    p.write_text(json.dumps({"bogus": 1}))
    with pytest.raises(InputError, match="bogus"):
        load_rates(p)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distributed_ondisk", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def test_plan_cli_answers_fast_with_a_table(tmp_path):
    t0 = time.perf_counter()
    r = run_cli(
        "plan",
        "--n",
        "2e9",
        "--d",
        "128",
        "--nlist",
        "1M",
        "--nodes",
        "10",
        "--gpus",
        "8",
        "--defaults",
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 3.0  # interpreter start included; the plan itself is ms
    for word in (
        "k-means",
        "trained index",
        "vslices",
        "merge (hslices)",
        "search",
        "bottleneck:",
        "client in",
        "RAM/proc",
        "n=2,000,000,000",
    ):
        assert word in r.stdout
    t0 = time.perf_counter()
    from distributed_ondisk.plan.cli import PRESETS  # noqa: F401  (import cost not timed below)
    from distributed_ondisk.plan.table import format_plan

    format_plan(make_plan(DEEP1B, NODES20))
    assert time.perf_counter() - t0 < 1.0


def test_plan_cli_refuses_bad_input_in_one_line():
    r = run_cli("plan", "--n", "1000", "--nlist", "1M", "--defaults")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "nlist=1000000" in r.stderr
    r = run_cli("plan", "--n", "lots")
    assert r.returncode == 2 and "not a count" in r.stderr
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "unknown subcommand" in r.stderr
    assert "plan" in run_cli().stdout


def test_plan_uses_the_calibration_file(tmp_path):
    cal = tmp_path / "cal.json"
    save_rates(DEFAULT_RATES.replace(add_vps_per_core=1.0, source="slow-machine"), cal)
    r = run_cli("plan", "--n", "1e8", "--nlist", "65536", "--calibration", str(cal))
    assert r.returncode == 0, r.stderr
    assert "slow-machine" in r.stdout
    assert "bottleneck: vslices" in r.stdout


def test_run_on_cluster_plan_target():
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(
        [
            "bash",
            str(REPO / "run_on_cluster.bash"),
            "plan",
            "--n",
            "1e8",
            "--nlist",
            "65536",
            "--defaults",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "bottleneck:" in r.stdout
