"""A tiny service for smoke tests, launch-script checks and benchmarks (`rpc.py serve-echo`)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np


class EchoService:
    RPC_METHODS = ("echo", "add", "sleep", "fail", "nbytes", "make_array")

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
        if n not in self._arrays:
            self._arrays = {n: np.arange(n, dtype=np.float32)}
        return self._arrays[n]

    def _private(self) -> None:  # never callable over RPC, even if listed
        raise AssertionError("private method called over RPC")
