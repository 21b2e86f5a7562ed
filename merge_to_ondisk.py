#!/usr/bin/env python3
"""Merge vertical slices' inverted lists [l0, l1) into one horizontal on-disk shard:
a contiguous lists file plus an index file naming it by a relative path.

Slices without a manifest (made by faiss alone, or copied without theirs) are
refused unless --adopt is given: each file is then checked (readable IVF, same
trained structure and centroids as the others and as --trained, list sizes
consistent, id ranges disjoint) and its manifest written next to it before the
merge.  --adopt without --output only adopts."""

import sys

from distributed_ondisk.stages.cli import merge_cli

if __name__ == "__main__":
    sys.exit(merge_cli())
