"""A tiny service for smoke tests, launch-script checks and benchmarks (`rpc.py serve-echo`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from distributed_ondisk.errors import InputError
from distributed_ondisk.rpc.codec import register_message_type


@register_message_type
@dataclasses.dataclass(frozen=True)
class Summary:
    """A registered message type: what `summarize` returns about an array."""

    shape: tuple
    dtype: str
    mean: float
    head: np.ndarray


# The benchmarks' largest transfer is 100 MB; a peer may not ask for more.
MAX_ARRAY_VALUES = 64 << 20


class EchoService:
    RPC_METHODS = ("echo", "add", "sleep", "fail", "nbytes", "make_array", "summarize")

    def __init__(self) -> None:
        self._arrays: dict[int, np.ndarray] = {}

    def echo(self, x: Any) -> Any:
        return x

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def nbytes(self, x: np.ndarray) -> int:
        """Bytes received: for measuring client -> server transfers without echoing back."""
        return int(np.asarray(x).nbytes)

    def make_array(self, n: int) -> np.ndarray:
        """A float32 array of n values (cached): for server -> client transfers."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_ARRAY_VALUES:
            raise InputError(
                f"make_array: n must be an integer in [0, {MAX_ARRAY_VALUES}], " f"got {n!r}"
            )
        if n not in self._arrays:
            self._arrays = {n: np.arange(n, dtype=np.float32)}
        return self._arrays[n]

    def summarize(self, x: np.ndarray) -> Summary:
        x = np.asarray(x)
        return Summary(x.shape, x.dtype.str, float(x.mean()) if x.size else 0.0, x[:3].copy())

    def _private(self) -> None:  # never callable over RPC, even if listed
        raise AssertionError("private method called over RPC")
