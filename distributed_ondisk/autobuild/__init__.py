"""Automatic index building as autofaiss users know it: ``build_index(embeddings, ...)``
over npy/parquet files on any fsspec filesystem, locally or on Spark, through the
project's k-means, trained-index, vslice and merge stages."""

from distributed_ondisk.autobuild.api import build_index
from distributed_ondisk.autobuild.mips import InnerProductIndex, open_index

__all__ = ["InnerProductIndex", "build_index", "open_index"]
