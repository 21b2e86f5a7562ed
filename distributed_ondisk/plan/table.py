"""The readable table of a :class:`~distributed_ondisk.plan.model.Plan`."""

from __future__ import annotations

from distributed_ondisk.ondisk.indexfile import IDX_BYTES
from distributed_ondisk.plan.model import Plan


def human_bytes(x: float) -> str:
    if x <= 0:
        return "-"
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def human_time(s: float) -> str:
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{s / 60:.3g} min"
    if s < 86400 * 2:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} d"


def format_plan(p: Plan, markdown: bool = False) -> str:
    w, c, st = p.workload, p.cluster, p.settings
    gpu = f", {c.gpus} GPU(s)" if c.gpus else ""
    head = [
        (
            f"workload: n={w.n:,} d={w.d} {w.fmt} ({human_bytes(w.n * w.row_bytes)}), "
            f"nlist={w.nlist:,}, {w.encoder} ({w.code_size} B + {IDX_BYTES} B id = "
            f"{human_bytes(w.index_bytes)} of lists), k-means {w.niter} iterations on "
            f"{w.kmeans_rows:,} rows"
        ),
        (
            f"cluster: {c.nodes} node(s) x {c.cores} cores{gpu}, {c.ram_gb:g} GB RAM, "
            f"{c.disk_gb:g} GB disk, {c.net_gbps:g} Gb/s"
        ),
        f"rates: {p.rates.source}",
        (
            f"settings: kmeans_servers={st.kmeans_servers} nvslices={st.nvslices} "
            f"nhslices={st.nhslices} search_servers={st.search_servers}"
        ),
    ]
    cols = (
        "stage",
        "procs",
        "read",
        "client out",
        "client in",
        "RAM/proc",
        "disk written",
        "wall time",
    )
    rows = [
        (
            s.name,
            str(s.procs),
            human_bytes(s.bytes_read),
            human_bytes(s.net_out),
            human_bytes(s.net_in),
            human_bytes(s.ram_per_proc),
            human_bytes(s.disk_written),
            human_time(s.wall_s),
        )
        for s in p.stages
    ]
    rows.append(("build total", "", "", "", "", "", "", human_time(p.build_s)))
    if markdown:
        table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        table += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in (cols, *rows)) for i in range(len(cols))]
        line = lambda r: "  ".join(
            v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths))
        )
        table = [line(cols), "  ".join("-" * wd for wd in widths)] + [line(r) for r in rows]
    b = p.bottleneck
    tail = [f"bottleneck: {b.name} ({human_time(b.wall_s)} of {human_time(p.build_s)} build)"]
    tail += [f"  {s.name}: {s.detail}" for s in p.stages]
    tail += [f"FLAG: {f}" for f in p.flags] or ["no flags: every process fits its node"]
    sep = "\n\n" if markdown else "\n"
    return sep.join(["\n".join(head), "\n".join(table), "\n".join(tail)])
