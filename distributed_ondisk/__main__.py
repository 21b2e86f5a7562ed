"""``distributed-ondisk SUBCOMMAND ...`` (also ``python -m distributed_ondisk``).

Every stage of the pipeline is a subcommand, so a pip-installed toolkit runs the
whole pipeline without a checkout; each takes the flags of the top-level script
it is named beside (``distributed-ondisk train`` = ``make_trained_index.py``...).

Subcommands are looked up in ``SUBCOMMANDS`` (name -> ("module:function", help)),
imported only when used: ``--help`` imports nothing (no faiss), and adding one is
one line here.  The function takes ``argv`` and, if it accepts one, ``prog`` (the
name its usage line shows).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence

PROG = "distributed-ondisk"
EXIT_ERROR = 2

#: In pipeline order (sizing, the four build stages, search, the whole pipeline),
#: then the autofaiss-style build and the RPC utilities.
SUBCOMMANDS = {
    "plan": (
        "distributed_ondisk.plan.cli:cli",
        "size a cluster: RAM, disk and time per stage (--calibrate)",
    ),
    "kmeans": (
        "distributed_ondisk.kmeans.cli:cli",
        "stage 1: k-means, in process or over servers (distributed_kmeans.py)",
    ),
    "train": (
        "distributed_ondisk.stages.cli:train_cli",
        "stage 2: the empty trained index (make_trained_index.py)",
    ),
    "vslice": (
        "distributed_ondisk.stages.cli:vslice_cli",
        "stage 3: one vertical slice, rows [i0, i1) (make_index_vslice.py)",
    ),
    "merge": (
        "distributed_ondisk.stages.cli:merge_cli",
        "stage 4: one on-disk shard, lists [l0, l1) (merge_to_ondisk.py)",
    ),
    "search": (
        "distributed_ondisk.search.cli:search_cli",
        "recall and QPS of the shards per nprobe (combined_index.py)",
    ),
    "serve": (
        "distributed_ondisk.search.cli:serve_cli",
        "serve some shards for distributed search (search_server.py)",
    ),
    "pipeline": (
        "distributed_ondisk.launch.cli:cli",
        "every stage, locally, on --data into --workdir (run_on_cluster.bash)",
    ),
    "build": (
        "distributed_ondisk.autobuild.cli:cli",
        "autofaiss-style build_index, locally or on Spark",
    ),
    "rpc": (
        "distributed_ondisk.rpc.cli:cli",
        "RPC utilities: keygen, ping, methods, serve-echo (rpc.py)",
    ),
}


def usage() -> str:
    lines = [f"usage: {PROG} SUBCOMMAND [options]   (or: python -m distributed_ondisk ...)"]
    lines += ["", "subcommands (each has --help):"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _missing_module_error(name: str, module: str, e: ModuleNotFoundError) -> str:
    if e.name and (module == e.name or module.startswith(e.name + ".")):
        return f"error: subcommand {name!r} is not available in this install ({module} is missing)"
    return f"error: subcommand {name!r} needs the module {e.name!r}, which is not installed"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n{usage()}", file=sys.stderr)
        return EXIT_ERROR
    module, func_name = SUBCOMMANDS[name][0].split(":")
    try:
        func = getattr(importlib.import_module(module), func_name)
    except ModuleNotFoundError as e:  # one line, not a traceback
        print(_missing_module_error(name, module, e), file=sys.stderr)
        return EXIT_ERROR
    kwargs = {"prog": f"{PROG} {name}"} if "prog" in inspect.signature(func).parameters else {}
    return int(func(argv[1:], **kwargs) or 0)


if __name__ == "__main__":
    sys.exit(main())
