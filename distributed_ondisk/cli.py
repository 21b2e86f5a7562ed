"""Shared plumbing for the thin command-line scripts.

A script builds an argparse parser, then calls :func:`run_main` with a function
taking the parsed namespace.  Expected failures (:class:`DistributedOndiskError`)
become one ``error: ...`` line on stderr and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from distributed_ondisk.errors import DistributedOndiskError
from distributed_ondisk.log import setup_logging

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def run_main(
    parser: argparse.ArgumentParser,
    main: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        rc = main(args)
    except DistributedOndiskError as e:
        print(f"error: {e}", file=sys.stderr)
        logging.getLogger(parser.prog).debug("details", exc_info=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)
