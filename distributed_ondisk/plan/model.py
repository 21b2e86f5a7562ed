"""The cost model: pure functions from (workload, cluster, settings, rates) to the
bytes, memory and time of each pipeline stage, and the layout that fits.  No I/O.

The records are in :mod:`~distributed_ondisk.plan.workload`, the stage costs in
:mod:`~distributed_ondisk.plan.costs`; this module chooses the layout
(:func:`suggest`) and puts the plan together (:func:`make_plan`), and re-exports
both modules' names, the ones the ``plan`` command, the validation and the tests use.
"""

from __future__ import annotations

import math

from distributed_ondisk.errors import InputError
from distributed_ondisk.plan.costs import (
    HNSW_BYTES_PER_NODE,
    KMEANS_BLOCK_BYTES,
    LIST_GROWTH,
    MERGE_BATCH_BYTES,
    VSLICE_BLOCK_ROWS,
    add_s_per_vec,
    encoder_train_rows,
    kmeans_cost,
    merge_cost,
    merge_ram,
    quantizer_bytes,
    search_cost,
    trained_index_cost,
    vslice_ram,
    vslices_cost,
)
from distributed_ondisk.plan.rates import DEFAULT_RATES, Rates
from distributed_ondisk.plan.workload import (
    DISK_USABLE,
    FORMAT_BYTES,
    GB,
    MB,
    RAM_USABLE,
    Cluster,
    Plan,
    Settings,
    StageCost,
    Workload,
    code_size,
    gib,
)

__all__ = [
    "DISK_USABLE",
    "FORMAT_BYTES",
    "GB",
    "HNSW_BYTES_PER_NODE",
    "KMEANS_BLOCK_BYTES",
    "LIST_GROWTH",
    "MB",
    "MERGE_BATCH_BYTES",
    "RAM_USABLE",
    "VSLICE_BLOCK_ROWS",
    "Cluster",
    "Plan",
    "Settings",
    "StageCost",
    "Workload",
    "add_s_per_vec",
    "code_size",
    "encoder_train_rows",
    "gib",
    "kmeans_cost",
    "make_plan",
    "merge_cost",
    "merge_ram",
    "quantizer_bytes",
    "search_cost",
    "suggest",
    "suggest_kmeans_servers",
    "trained_index_cost",
    "vslice_ram",
    "vslices_cost",
]


def suggest_kmeans_servers(w: Workload, c: Cluster, r: Rates) -> int:
    """The server count with the shortest iteration whose client fits its RAM.

    More servers divide the assignment but every one adds a k*d reply to the
    client's inbound bytes, RAM and reduction: the time is a/S + b*S, so the
    best S is often well below the node count.
    """
    if not c.remote:
        return 1
    cands = sorted({c.nodes, *(2**i for i in range(c.nodes.bit_length()) if 2**i <= c.nodes)})
    costs = [(kmeans_cost(w, c, r, s), s) for s in cands]
    fits = [(k.extra["iter_s"], s) for k, s in costs if not any("CANNOT" in f for f in k.flags)]
    return min(fits)[1] if fits else 1


def suggest(w: Workload, c: Cluster, given: Settings, r: Rates = DEFAULT_RATES) -> Settings:
    """Smallest layouts whose processes fit RAM and disk, rounded to use every node."""
    ks = given.kmeans_servers or suggest_kmeans_servers(w, c, r)
    nv = given.nvslices
    if nv is None:
        budget = RAM_USABLE * c.ram_gb * GB - vslice_ram(w, 0)
        need = math.ceil(w.n * w.entry_bytes * LIST_GROWTH / max(budget, 1))
        nv = c.nodes * max(1, math.ceil(need / c.nodes))
    ss = given.search_servers
    if ss is None:
        # lists in the page cache when the cluster's RAM allows, else on the disks
        cache = RAM_USABLE * c.ram_gb * GB - quantizer_bytes(w)
        disk = DISK_USABLE * c.disk_gb * GB
        ss = min(c.nodes, max(1, math.ceil(w.index_bytes / max(cache, 1))))
        ss = max(ss, math.ceil(w.index_bytes / disk))
    nh = given.nhslices
    if nh is None:
        nh = ss * max(1, math.ceil(c.nodes / ss))
    return Settings(ks, nv, nh, ss)


def make_plan(
    w: Workload, c: Cluster, given: Settings | None = None, rates: Rates = DEFAULT_RATES
) -> Plan:
    """The plan of ``w`` on ``c``; ``given`` fixes parts of the layout (default: all chosen)."""
    w.validate()
    c.validate()
    st = suggest(w, c, given or Settings(), rates)
    for name in ("kmeans_servers", "nvslices", "nhslices", "search_servers"):
        if getattr(st, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(st, name)}")
    if st.nhslices > w.nlist:
        raise InputError(f"{st.nhslices} hslices for only {w.nlist} inverted lists")
    stages = [
        kmeans_cost(w, c, rates, st.kmeans_servers),
        trained_index_cost(w, c, rates),
        vslices_cost(w, c, rates, st.nvslices),
        merge_cost(w, c, rates, st.nvslices, st.nhslices),
        search_cost(w, c, rates, st.search_servers),
    ]
    flags = [f for s in stages for f in s.flags]
    if st.search_servers > c.nodes:
        flags.append(
            f"{st.search_servers} search servers on {c.nodes} nodes: " "the index needs more nodes"
        )
    if w.index_bytes + w.n * w.row_bytes > DISK_USABLE * c.disk_gb * GB * c.nodes:
        flags.append(
            f"CANNOT FIT: data + index {gib(w.index_bytes + w.n * w.row_bytes)} "
            f"exceed the cluster's disks"
        )
    return Plan(w, c, st, rates, stages, flags)
