#!/usr/bin/env python3
"""Search horizontal on-disk shards as one index and report recall and QPS per nprobe.

    python combined_index.py --shards WORKDIR/hslices --queries q.fvecs --k 10 \\
        --nprobe 1,4,16,64 [--gt gt.ivecs | --database base.fvecs] \\
        [--in-ram] [--servers h1:p1,h2:p2 --secret-file S] [--plot curves.png]

Shards are opened read-only and must together cover every inverted list once,
from one trained index; a missing shard is named (h1 of 4, its lists).  Shard
files hold only the inverted lists: the trained index (transform + coarse
quantizer) is found where the shards' manifests record it, or given with
--trained.  recall@r is the fraction of queries whose true nearest neighbour is
in the first r results (r <= k); 10-R@10 is the share of the true 10 nearest
found in the first 10 (not trivially 1 when the queries are indexed rows).
Without --gt, the ground truth is
computed from --database by brute force and cached next to the queries.
"""

import sys

from distributed_ondisk.search.cli import search_cli

if __name__ == "__main__":
    sys.exit(search_cli())
