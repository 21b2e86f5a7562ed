"""Logging set-up for the command-line scripts, and progress reporting.

The library only calls ``logging.getLogger(__name__)``; scripts call
:func:`setup_logging` once.  Long loops report through :class:`Progress`:
a tqdm bar on an interactive terminal, otherwise (Slurm logs, CI) a log line
with rate and ETA every ``every_s`` seconds, so batch logs stay readable.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    # faiss logs which SIMD build it tried at INFO: noise in every stage's log.
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def format_seconds(s: float) -> str:
    if math.isnan(s) or s == float("inf"):
        return "?"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """Counts work done out of ``total`` and reports rate and ETA.

    ``unit`` names what is counted (``"vec"``, ``"list"``, ``"iter"``).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        logger: logging.Logger | None = None,
        every_s: float = 10.0,
        enable_bar: bool | None = None,
    ) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.done = 0
        self.logger = logger or logging.getLogger("distributed_ondisk.progress")
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._last = self.t0
        if enable_bar is None:
            enable_bar = sys.stderr.isatty() and not os.environ.get("CI")
        self._bar = None
        if enable_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, unit_scale=True, leave=False)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self) -> float:
        el = self.elapsed
        return self.done / el if el > 0 else 0.0

    def eta(self) -> float:
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else float("inf")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(
                "%s: %d/%d %s (%.3g %s/s, ETA %s)",
                self.desc,
                self.done,
                self.total,
                self.unit,
                self.rate(),
                self.unit,
                format_seconds(self.eta()),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # typing.Self needs Python 3.11 (we support 3.10) and typing_extensions is no
    # dependency; the class is not meant to be subclassed
    def __enter__(self) -> Progress:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
