#!/usr/bin/env python3
"""Distributed k-means (drop-in for faiss's classic distributed_kmeans.py).

In process:   distributed_kmeans.py --indata x.fvecs --k 4096 --out centroids.npy
Servers:      distributed_kmeans.py --server --indata x.fvecs --i0 0 --i1 500000 --port 12345
Client:       distributed_kmeans.py --client --servers "h1:12345 h2:12345" --k 4096 --out c.npy
Self-test:    distributed_kmeans.py --test 0,1,2,3
"""

import sys

from distributed_ondisk.kmeans.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
