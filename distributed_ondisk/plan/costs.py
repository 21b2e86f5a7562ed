"""The cost of each pipeline stage: pure functions from (workload, cluster, rates,
layout) to the bytes, memory and time of the stage.  No I/O; faiss is only imported
(through the stages whose constants the model reads), never called.
Why ~340 lines: one function per stage, each short; they share the rate and layout
helpers below, and a per-stage module would only re-import them.

What each stage costs is read off the code that runs it:

* k-means (``kmeans/loop.py``, ``cpu.py``, ``remote.py``, ``shards.py``): at most
  ``k * max_points_per_centroid`` training rows (a sample held in RAM as float32
  by each server).  CPU servers assign with bounds (``accel.py``): an iteration
  costs ``accel.work_fraction()`` of Lloyd's (measured), plus the bounds' memory;
  GPU servers run Lloyd's.  Below ``tree.TREE_MIN_SERVERS`` servers the client
  sends the centroids (k*d float32) to every server and gets back the reduced
  assignment (k*d float64 sums + k int64 counts) from every server, holds all
  replies and adds them: its inbound bytes and RAM grow with servers * k * d.
  From there on the servers reduce in a tree (``tree.py``): the client sends the
  centroids once and receives one float32 reply; each level of the tree moves
  ``FANOUT`` float32 replies into a server and adds them.  Servers read bounded
  64 MiB blocks; one server per node (it uses all the node's GPUs).
* trained index (``stages/train.py``): one process; the sample rows, the
  HNSW32 quantizer over the k centroids (efConstruction 200).
* vslices (``stages/vslice.py``): one job per node at a time with all its cores;
  the slice's lists in RAM (faiss's vectors grow geometrically: x1.5 on average),
  65536-row blocks, written once.
* merge (``stages/merge.py``, ``listcopy.py``): one job per node at a time, reads
  its lists from every vslice, writes them once; RAM: listcopy's ``MEMORY_BATCHES``
  batches of 2 MiB plus every vslice's list table (sizes + offsets, 16 bytes per
  list per vslice).
* search (``search/client.py``, ``server.py``): the client quantizes (transform +
  HNSW) once per query and sends each server only its probed lists; servers scan.

Sizes the stages fix (block and batch sizes, the merge's buffers, the quantizer's M)
are imported from the modules that own them, so the model follows the code.
"""

from __future__ import annotations

import math

from distributed_ondisk.kmeans.accel import DEFAULT_BOUND_BYTES as KMEANS_BOUND_BYTES
from distributed_ondisk.kmeans.accel import work_fraction as kmeans_work_fraction
from distributed_ondisk.kmeans.base import DEFAULT_BLOCK_BYTES as KMEANS_BLOCK_BYTES
from distributed_ondisk.kmeans.tree import FANOUT as KMEANS_TREE_FANOUT
from distributed_ondisk.kmeans.tree import TREE_MIN_SERVERS as KMEANS_TREE_MIN_SERVERS
from distributed_ondisk.plan.rates import REF_EF_SEARCH, Rates
from distributed_ondisk.plan.workload import (
    DISK_USABLE,
    GB,
    MB,
    RAM_USABLE,
    Cluster,
    StageCost,
    Workload,
    gib,
)
from distributed_ondisk.stages.listcopy import MEMORY_BATCHES as MERGE_MEMORY_BATCHES
from distributed_ondisk.stages.merge import DEFAULT_BATCH_BYTES as MERGE_BATCH_BYTES
from distributed_ondisk.stages.train import TrainedIndexConfig
from distributed_ondisk.stages.vslice import DEFAULT_BLOCK_ROWS as VSLICE_BLOCK_ROWS

LIST_GROWTH = 1.5  # faiss ArrayInvertedLists capacity / size, on average
HNSW_M = TrainedIndexConfig.hnsw_m  # the trained index's quantizer links
HNSW_BYTES_PER_NODE = HNSW_M * 2 * 4 * 1.1 + 16  # level-0 links (2*M ids) + upper levels, levels


def _log_ratio(a: float, b: float) -> float:
    return math.log2(max(a, 2)) / math.log2(max(b, 2))


def kmeans_cost(w: Workload, c: Cluster, r: Rates, servers: int) -> StageCost:
    k, d = w.nlist, w.d
    n_train = min(w.kmeans_rows, k * w.max_points_per_centroid)
    sampled = n_train < w.kmeans_rows
    per_server = math.ceil(n_train / servers)
    # a server runs on one node (all its GPUs or cores); servers share a node when more
    gpus = min(c.gpus, c.gpus * c.nodes // servers) if c.gpus else 0
    flops = 2.0 * per_server * k * d
    if gpus:
        compute = flops / (gpus * r.gpu_assign_gflops * 1e9)
        resident = per_server / gpus * d * 4 <= 0.6 * r.gpu_mem_gb * GB
        if not resident:
            compute += per_server * d * 4 / (r.pcie_gbs * GB)
    else:
        cores = max(1, min(c.cores, c.cores * c.nodes // servers))
        # the bounds skip most distances after the first iterations (measured)
        compute = flops / (cores * r.assign_gflops_per_core * 1e9) * kmeans_work_fraction()
        resident = True
    reply = k * d * 8 + k * 8
    tree = c.remote and servers >= KMEANS_TREE_MIN_SERVERS
    if tree:  # one float32 reply in, the centroids once out
        reply_in = k * d * 4 + k * 8
        out_iter, in_iter = float(k * d * 4), float(reply_in)
    else:
        reply_in = reply
        out_iter = servers * k * d * 4 if c.remote else 0.0
        in_iter = servers * reply if c.remote else 0.0
    comm = 0.0
    if c.remote:  # the client's NIC carries the centroids and the replies it receives
        comm = max(out_iter, in_iter) / c.net_Bps + in_iter / (r.rpc_mbps * MB)
    if tree:
        # every level: a server receives and adds FANOUT float32 replies (levels overlap
        # with nothing: a parent waits for its children)
        levels = math.ceil(math.log(servers + 1, KMEANS_TREE_FANOUT)) - 1
        per_level = KMEANS_TREE_FANOUT * reply_in * (1 / c.net_Bps + 1 / (r.rpc_mbps * MB))
        comm += levels * per_level
        reduce = levels * KMEANS_TREE_FANOUT * reply_in / (r.reduce_mbps * MB)
    else:
        reduce = servers * reply / (r.reduce_mbps * MB) if servers > 1 else 0.0
    it = compute + comm + reduce
    slice_bytes = per_server * w.row_bytes
    # no sample: every iteration streams the server's rows from the page cache or disk
    read_iter = 0.0 if sampled else servers * slice_bytes
    disk_iter = 0.0
    if not sampled and slice_bytes > RAM_USABLE * c.ram_gb * GB * c.nodes / servers / 2:
        disk_iter = slice_bytes / (r.disk_read_mbps * MB)
        it += disk_iter
    held = per_server * d * 4 if sampled else 0.0
    # CPU servers keep bounds: float32 per row and centroid group (at most the default
    # budget) and the row's centroid; a tree node holds its children's replies
    bounds = 0.0 if gpus else min(KMEANS_BOUND_BYTES, per_server * 4 * k / 10) + 8 * per_server
    server_ram = held + 2 * KMEANS_BLOCK_BYTES + k * d * (4 + 8 + 12) + 16 * k + bounds
    if tree:
        server_ram += KMEANS_TREE_FANOUT * reply_in
        client_ram = reply_in + 2 * k * d * 4
    else:
        client_ram = (servers + 1) * reply + 2 * k * d * 4 if c.remote else server_ram
    first_read = n_train * w.row_bytes
    s = StageCost(
        "k-means",
        servers,
        first_read + w.niter * read_iter,
        w.niter * out_iter,
        w.niter * in_iter,
        max(server_ram, client_ram),
        0.0,
        w.niter * it + first_read / (r.disk_read_mbps * MB * servers),
        detail=(
            f"{servers} server(s), {n_train:,} rows, per iteration {it:.2f} s "
            f"(assign {compute:.2f}, network {comm:.2f}, client reduce "
            f"{reduce:.2f}); client in {gib(in_iter)}/iter, client RAM "
            f"{gib(client_ram)}, server RAM {gib(server_ram)}"
        ),
    )
    s.extra.update(iter_s=it, compute_s=compute, comm_s=comm + reduce)
    if c.remote and comm + reduce > compute:
        s.flags.append(
            f"k-means is network-bound: the client receives "
            f"{gib(in_iter)} per iteration ({comm + reduce:.1f} s vs "
            f"{compute:.1f} s of assignment"
            + (
                f", tree of {servers} servers)"
                if tree
                else f", {servers} replies of {gib(reply)}); the reduction tree "
                f"(--reduce tree, default from {KMEANS_TREE_MIN_SERVERS} servers) cuts it"
            )
        )
    if client_ram > RAM_USABLE * c.ram_gb * GB:
        s.flags.append(
            f"CANNOT FIT: the k-means client holds "
            f"{1 if tree else servers} replies of {gib(reply_in)} = {gib(client_ram)} "
            f"> {RAM_USABLE:.0%} of {c.ram_gb:g} GB"
        )
    if server_ram > RAM_USABLE * c.ram_gb * GB:
        s.flags.append(f"CANNOT FIT: a k-means server needs {gib(server_ram)} of RAM")
    if not resident:
        s.flags.append(
            "k-means: a GPU's slice does not fit in GPU memory; rows cross PCIe " "every iteration"
        )
    if disk_iter:
        s.flags.append(
            f"k-means: the {gib(slice_bytes)} slice per server is not cached in RAM; "
            f"it is read from disk every iteration ({disk_iter:.1f} s)"
        )
    return s


def quantizer_bytes(w: Workload) -> float:
    return w.nlist * (w.d * 4 + HNSW_BYTES_PER_NODE)


def encoder_train_rows(w: Workload, rows: int) -> int:
    """Rows faiss trains the encoder on: IndexIVF.train subsamples to
    ``train_encoder_num_vectors()``, 100k for a scalar quantizer, 256 x 256 for PQ."""
    cap = 65_536 if w.encoder.upper().startswith("PQ") else 100_000
    return min(rows, cap)


def trained_index_cost(w: Workload, c: Cluster, r: Rates) -> StageCost:
    rows = min(w.train_rows, w.n)
    per_vec = (
        (w.d / r.hnsw_ref_d) * _log_ratio(w.nlist, r.hnsw_ref_nlist) / r.hnsw_build_vps_per_core
    )
    build = w.nlist * per_vec / c.cores
    read = rows * w.row_bytes + w.nlist * w.d * 4
    # the encoder trains on residuals: every sample row is assigned through the HNSW
    # quantizer (as costly as an add); the rotation is one small matrix product
    residuals = (
        encoder_train_rows(w, rows)
        * (w.d / r.add_ref_d)
        * _log_ratio(w.nlist, r.add_ref_nlist)
        / r.train_vps_per_core
        / c.cores
    )
    t = build + residuals + read / (r.disk_read_mbps * MB)
    ram = 3 * rows * w.d * 4 + 2 * quantizer_bytes(w)
    s = StageCost(
        "trained index",
        1,
        read,
        0,
        0,
        ram,
        quantizer_bytes(w) + w.d * w.d * 4,
        t,
        detail=f"HNSW{HNSW_M} over {w.nlist:,} centroids on {c.cores} cores: {build:.0f} s, "
        f"encoder trained on {encoder_train_rows(w, rows):,} residuals: {residuals:.0f} s",
    )
    if ram > RAM_USABLE * c.ram_gb * GB:
        s.flags.append(f"CANNOT FIT: the trained index build needs {gib(ram)}")
    return s


def add_s_per_vec(w: Workload, r: Rates) -> float:
    return (w.d / r.add_ref_d) * _log_ratio(w.nlist, r.add_ref_nlist) / r.add_vps_per_core


def vslice_ram(w: Workload, rows: float) -> float:
    return (
        rows * w.entry_bytes * LIST_GROWTH
        + 2 * quantizer_bytes(w)
        + 3 * VSLICE_BLOCK_ROWS * w.d * 4
        + 16 * w.nlist
    )


def vslices_cost(w: Workload, c: Cluster, r: Rates, nv: int) -> StageCost:
    rows = math.ceil(w.n / nv)
    waves = math.ceil(nv / c.nodes)
    add = rows * add_s_per_vec(w, r) / c.cores
    read = rows * w.row_bytes / (r.disk_read_mbps * MB)
    write = rows * w.entry_bytes / (r.disk_write_mbps * MB)
    per = add + read + write
    ram = vslice_ram(w, rows)
    s = StageCost(
        "vslices",
        min(nv, c.nodes),
        w.n * w.row_bytes,
        0,
        0,
        ram,
        w.index_bytes + nv * w.nlist * 16,
        waves * per,
        detail=f"{nv} x {rows:,} rows, {waves} wave(s) of {per:.0f} s "
        f"(add {add:.0f} s on {c.cores} cores)",
    )
    if ram > RAM_USABLE * c.ram_gb * GB:
        s.flags.append(
            f"CANNOT FIT: a vslice of {rows:,} rows needs {gib(ram)} of RAM "
            f"(> {RAM_USABLE:.0%} of {c.ram_gb:g} GB): use more vslices"
        )
    return s


def merge_ram(w: Workload, nv: int) -> float:
    return MERGE_MEMORY_BATCHES * MERGE_BATCH_BYTES + nv * (w.nlist + 1) * 16 + 64 * MB


def merge_cost(w: Workload, c: Cluster, r: Rates, nv: int, nh: int) -> StageCost:
    per_bytes = w.index_bytes / nh
    waves = math.ceil(nh / c.nodes)
    per = r.merge_job_s + per_bytes / (r.merge_mbps * MB)
    ram = merge_ram(w, nv)
    s = StageCost(
        "merge (hslices)",
        min(nh, c.nodes),
        w.index_bytes,
        0,
        0,
        ram,
        w.index_bytes,
        waves * per,
        detail=f"{nh} hslices of {gib(per_bytes)} from {nv} vslices, {waves} wave(s)",
    )
    if ram > RAM_USABLE * c.ram_gb * GB:
        s.flags.append(f"CANNOT FIT: a merge job holds {nv} list tables: {gib(ram)}")
    return s


def search_cost(w: Workload, c: Cluster, r: Rates, servers: int) -> StageCost:
    quant = (
        r.quant_us_per_query
        * 1e-6
        * (w.d / r.search_ref_d)
        * (w.ef_search / REF_EF_SEARCH)
        * _log_ratio(w.nlist, r.search_ref_nlist)
    )
    scanned = w.nprobe * w.n / w.nlist
    scan = scanned * r.scan_ns_per_code * 1e-9 * (w.code_size / r.search_ref_code_size)
    client_cores = c.cores
    server_cores = c.cores * servers
    per_server_bytes = w.index_bytes / servers
    cached = per_server_bytes <= RAM_USABLE * c.ram_gb * GB - quantizer_bytes(w)
    io = 0.0
    if not cached:  # lists come from disk: nprobe random reads of one list each
        io = w.nprobe * (w.n / w.nlist) * w.entry_bytes / (r.disk_read_mbps * MB)
    qps = min(client_cores / quant, server_cores / scan, servers / io if io else float("inf"))
    touched = min(servers, w.nprobe)
    out = w.nq * (touched * w.d * 4 + w.nprobe * 8)
    inn = w.nq * touched * w.k * 12
    qps = min(qps, c.net_Bps / max((out + inn) / w.nq, 1))
    if not c.remote:  # one process: quantization and scan share the cores
        qps = c.cores / (quant + scan + io)
    ram = quantizer_bytes(w) + 16 * w.nlist + (per_server_bytes if cached else 0)
    s = StageCost(
        f"search (nprobe {w.nprobe})",
        servers,
        w.nq * w.nprobe * (w.n / w.nlist) * w.entry_bytes,
        out,
        inn,
        ram,
        0.0,
        w.nq / qps,
        detail=f"{qps:,.0f} QPS; {scanned:,.0f} codes/query; quantize "
        f"{quant * 1e6:.0f} us/query on the client; "
        f"{gib(per_server_bytes)} of lists per server",
    )
    s.extra["qps"] = qps
    if not cached:
        s.flags.append(
            f"search: {gib(per_server_bytes)} of lists per server exceed its RAM: "
            "every probe reads from disk; more search servers keep lists cached"
        )
    if per_server_bytes > DISK_USABLE * c.disk_gb * GB:
        s.flags.append(
            f"CANNOT FIT: {gib(per_server_bytes)} of hslices per search server on "
            f"a {c.disk_gb:g} GB disk"
        )
    return s
