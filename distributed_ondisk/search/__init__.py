"""Searching horizontal shards: in process (CombinedIndex), or served by search servers
that each hold some shards and queried by a routing client (DistributedSearchClient)."""

from distributed_ondisk.search.client import DistributedSearchClient, SearchResult
from distributed_ondisk.search.combined import CombinedIndex, TrainedSearcher
from distributed_ondisk.search.server import SearchServer, open_search_server

__all__ = [
    "CombinedIndex",
    "DistributedSearchClient",
    "SearchResult",
    "SearchServer",
    "TrainedSearcher",
    "open_search_server",
]
