#!/usr/bin/env python3
"""Fill a copy of the trained index with rows [i0, i1) of the data (ids = row numbers)
and write it as one vertical slice, with a manifest.  Skips a finished slice."""

import sys

from distributed_ondisk.stages.cli import vslice_cli

if __name__ == "__main__":
    sys.exit(vslice_cli())
