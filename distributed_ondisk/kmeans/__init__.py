"""Distributed k-means: the ``DatasetAssign`` interface, its CPU / GPU / remote
implementations, the loop with checkpoints, and the ``distributed_kmeans.py`` logic.

Importing this package needs numpy only; faiss (CPU backend), torch (GPU
backend) and scipy are imported by the modules that use them.
"""

from distributed_ondisk.kmeans.base import AssignResult, DatasetAssign
from distributed_ondisk.kmeans.loop import KMeansConfig, KMeansResult, train_kmeans
from distributed_ondisk.kmeans.shards import FaissCompatAssign, ShardedAssign
from distributed_ondisk.kmeans.source import RowSource

__all__ = [
    "AssignResult",
    "DatasetAssign",
    "FaissCompatAssign",
    "KMeansConfig",
    "KMeansResult",
    "RowSource",
    "ShardedAssign",
    "train_kmeans",
]
