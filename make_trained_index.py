#!/usr/bin/env python3
"""Build the empty trained index IVF<k>_HNSW32,SQ6 (behind a random rotation) from
k-means centroids and a training sample of the data."""

import sys

from distributed_ondisk.stages.cli import train_cli

if __name__ == "__main__":
    sys.exit(train_cli())
