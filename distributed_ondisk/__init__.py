"""distributed_ondisk: distributed k-means, IVF index build in vertical slices,
merge into horizontal on-disk shards, and sharded search.

The pipeline (each stage a module here and a thin script at the repository root):

    vectors -> distributed k-means -> trained index -> vertical slices
            -> horizontal on-disk shards -> search (in process or served)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from distributed_ondisk.errors import DistributedOndiskError


def _check_single_faiss() -> None:
    """faiss-cpu and faiss-gpu* provide the same ``faiss`` module: with both installed,
    whichever pip unpacked last silently wins."""
    found = []
    for dist in _metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "faiss-cpu" or name.startswith("faiss-gpu"):
            found.append(name)
    if "faiss-cpu" in found and len(found) > 1:
        raise ImportError(
            f"both {' and '.join(sorted(found))} are installed: they provide the "
            "same faiss module; keep one (e.g. pip uninstall -y faiss-cpu for GPUs)"
        )


_check_single_faiss()

__version__ = "0.1.0"
__all__ = ["DistributedOndiskError", "__version__", "build_index", "open_index"]


def __getattr__(name: str):
    # distributed_ondisk.build_index(...) / open_index(...) as autofaiss users call them,
    # imported on first use so that ``import distributed_ondisk`` stays light (no faiss,
    # no pyarrow)
    if name == "build_index":
        from distributed_ondisk.autobuild.api import build_index

        return build_index
    if name == "open_index":
        from distributed_ondisk.autobuild.mips import open_index

        return open_index
    raise AttributeError(f"module 'distributed_ondisk' has no attribute {name!r}")
