"""The module framing.py imports for encoding messages; the codec itself is rpc/codec.py.

Kept under this name so that framing.py (and code that registered message types
through it) need not change; nothing here is pickle any more.
"""
from __future__ import annotations

from distributed_ondisk.rpc.codec import dumps, loads, register_message_type

__all__ = ["dumps", "loads", "register_message_type"]
