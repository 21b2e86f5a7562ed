"""The shared secret: where it comes from, how it is created, the CLI flags.

A secret is read from a file that only its owner may read (a group- or
world-readable secret is as good as published, so such a file is refused; so
are symlinks and files owned by another user than the one running), or
from the environment: ``DISTRIBUTED_ONDISK_SECRET`` (the secret itself) or
``DISTRIBUTED_ONDISK_SECRET_FILE`` (a path).  Leading/trailing whitespace is
stripped, so files written by editors with a final newline work.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Union

from distributed_ondisk.atomic import fsync_path, private_temp_for
from distributed_ondisk.errors import InputError

ENV_SECRET = "DISTRIBUTED_ONDISK_SECRET"
ENV_SECRET_FILE = "DISTRIBUTED_ONDISK_SECRET_FILE"
MIN_SECRET_BYTES = 16
MAX_SECRET_FILE_BYTES = 64 << 10

PathLike = Union[str, "os.PathLike[str]"]


def generate_secret() -> bytes:
    """A fresh random secret: 32 random bytes as 64 hex characters."""
    return secrets.token_hex(32).encode("ascii")


def check_secret(secret: bytes, origin: str = "code") -> bytes:
    """``secret`` stripped, or InputError if it is not bytes of at least MIN_SECRET_BYTES.

    Every path in (files, environment, ``Server(...)``/``Client(...)`` from code)
    goes through here: a short secret can be guessed offline from one handshake.
    """
    if not isinstance(secret, (bytes, bytearray)):
        raise InputError(
            f"shared secret from {origin} must be bytes, not " f"{type(secret).__name__}"
        )
    secret = bytes(secret).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise InputError(
            f"shared secret from {origin} is {len(secret)} bytes; at least "
            f"{MIN_SECRET_BYTES} are needed (create one with `rpc.py keygen PATH`)"
        )
    return secret


def read_secret_file(path: PathLike) -> bytes:
    """Read a secret file, refusing a symlink, a file of another user, or one that
    others than its owner can read."""
    p = Path(path)
    try:
        # O_NOFOLLOW: a symlink planted in a shared work directory could point us at
        # a file the attacker controls (or make us read one of our own by mistake).
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"secret file {p} is a symbolic link; give the file itself") from e
        raise InputError(f"cannot open secret file {p}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # fstat the opened file: no check-then-open race
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"secret file {p} is not a regular file")
        if st.st_uid != os.geteuid():
            # Even root must not trust a 0600 file someone else wrote: they chose the secret.
            raise InputError(
                f"secret file {p} is owned by uid {st.st_uid}, not by the "
                f"running user (uid {os.geteuid()}); create your own with "
                f"`rpc.py keygen PATH`"
            )
        if st.st_mode & 0o077:
            raise InputError(
                f"secret file {p} has mode {stat.S_IMODE(st.st_mode):04o}; it must "
                f"be readable only by its owner (run `chmod 600 {p}`)"
            )
        data = f.read(MAX_SECRET_FILE_BYTES + 1)
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise InputError(
                f"secret file {p} is over {MAX_SECRET_FILE_BYTES} bytes: not a "
                f"secret file (create one with `rpc.py keygen PATH`)"
            )
        return check_secret(data, f"file {p}")


def load_secret(path: PathLike | None = None) -> bytes | None:
    """The shared secret from ``path``, else from the environment, else None."""
    if path is not None:
        return read_secret_file(path)
    literal = os.environ.get(ENV_SECRET)
    file = os.environ.get(ENV_SECRET_FILE)
    if literal and file:
        raise InputError(f"both {ENV_SECRET} and {ENV_SECRET_FILE} are set; set only one")
    if literal:
        return check_secret(literal.encode("utf-8"), f"${ENV_SECRET}")
    if file:
        return read_secret_file(file)
    return None


def write_secret_file(path: PathLike, secret: bytes | None = None, *, force: bool = False) -> bytes:
    """Write ``secret`` (default: a new one) to ``path`` with mode 0600, atomically.

    Refuses to replace an existing file unless ``force``.  Returns the secret.
    """
    secret = check_secret(secret if secret is not None else generate_secret(), "argument")
    final = Path(path)
    if final.exists() and not force:
        raise InputError(f"secret file {final} already exists; pass --force to replace it")
    # 0600 from its creation, written through the descriptor mkstemp opened: no window
    # in which another user could open the file and read the secret later.
    fd, tmp = private_temp_for(final)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)  # fails if someone created `final` meanwhile
            except FileExistsError as e:
                raise InputError(
                    f"secret file {final} already exists; pass --force to " f"replace it"
                ) from e
        fsync_path(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return secret


def add_secret_args(parser: argparse.ArgumentParser) -> None:
    """The shared flags of every script that serves or calls over RPC."""
    group = parser.add_argument_group("RPC authentication")
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"file holding the shared secret (mode 0600; create one with "
        f"`rpc.py keygen PATH`). Default: ${ENV_SECRET_FILE} or "
        f"${ENV_SECRET}",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="no authentication; servers then only listen on loopback",
    )


def secret_from_args(args: argparse.Namespace) -> bytes | None:
    """The secret the flags ask for: None only with --insecure."""
    if getattr(args, "insecure", False):
        if getattr(args, "secret_file", None):
            raise InputError("--insecure and --secret-file contradict each other")
        return None
    secret = load_secret(getattr(args, "secret_file", None))
    if secret is None:
        raise InputError(
            f"no shared secret: pass --secret-file PATH, set {ENV_SECRET_FILE} "
            f"or {ENV_SECRET}, or use --insecure (loopback only)"
        )
    return secret
