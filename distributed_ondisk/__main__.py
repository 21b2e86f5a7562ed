"""``python -m distributed_ondisk SUBCOMMAND ...`` (also the ``distributed-ondisk`` script).

Subcommands are looked up in ``SUBCOMMANDS`` (name -> "module:function taking
argv"), imported only when used, so adding one is one line here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "plan": (
        "distributed_ondisk.plan.cli:cli",
        "size a cluster: bytes, RAM, disk and time per stage (--calibrate measures)",
    ),
}


def usage() -> str:
    lines = ["usage: python -m distributed_ondisk SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"error: unknown subcommand {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[argv[0]][0].split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
