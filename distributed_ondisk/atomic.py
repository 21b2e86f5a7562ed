"""Atomic, durable file output.

Every file the toolkit produces is first written under a temporary name in the
same directory, flushed and fsync'ed, then renamed over the final name (rename
is atomic within one filesystem), and the directory is fsync'ed so the rename
itself survives a power loss.  A reader therefore sees either the old complete
file or the new complete file, never a prefix.  Temporary names start with
``.`` and contain ``.tmp-`` so that a crashed writer's leftovers are easy to
recognise and are never mistaken for outputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Union

from distributed_ondisk.errors import DistributedOndiskError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

TMP_MARKER = ".tmp-"


def fsync_path(path: PathLike) -> None:
    """fsync a file, or a directory so that a rename inside it is durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    # Read, not set-and-restore: os.umask(x) changes it for every thread meanwhile.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def temp_name_for(path: PathLike) -> Path:
    """A fresh temporary path next to ``path`` (same filesystem, so rename is atomic).

    mkstemp creates files 0600; outputs are shared between jobs and users like
    any file the user creates, so they get the umask's permissions instead.
    """
    fd, tmp = private_temp_for(path)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return tmp


def private_temp_for(path: PathLike) -> tuple[int, Path]:
    """An open descriptor and name of a fresh temporary file next to ``path``, mode 0600
    from its creation (mkstemp: O_CREAT|O_EXCL, mode 0600 whatever the umask).

    For secrets: unlike :func:`temp_name_for` no moment exists at which the file is
    readable by others, so nobody can open it early and read what is written later.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{TMP_MARKER}", dir=final.parent)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on clean exit fsync it and rename it to ``path``.

    For writers that take a file name (``faiss.write_index``, ``np.save``).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    tmp = temp_name_for(final)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, DistributedOndiskError):
            # Disk full, quota, I/O error: one clear line naming the output, not a traceback.
            raise OutputError(f"cannot write {final}: {e.strerror or e}") from e
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; rename it to ``path`` when the block ends cleanly."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open only writes, got mode {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete leftovers of writers that crashed before their rename. Returns what was removed."""
    removed = []
    for p in Path(directory).glob(f".*{TMP_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
