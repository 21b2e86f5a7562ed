"""distributed_ondisk: distributed k-means, IVF index build in vertical slices,
merge into horizontal on-disk shards, and sharded search.

The pipeline (each stage a module here and a thin script at the repository root):

    vectors -> distributed k-means -> trained index -> vertical slices
            -> horizontal on-disk shards -> search (in process or served)
"""
from __future__ import annotations

from distributed_ondisk.errors import DistributedOndiskError

__version__ = "0.1.0"
__all__ = ["DistributedOndiskError", "__version__", "build_index"]


def __getattr__(name: str):
    # distributed_ondisk.build_index(...) as autofaiss users call it, imported on first use
    # so that ``import distributed_ondisk`` stays light (no faiss, no pyarrow)
    if name == "build_index":
        from distributed_ondisk.autobuild.api import build_index
        return build_index
    raise AttributeError(f"module 'distributed_ondisk' has no attribute {name!r}")
