"""Secret files: never readable by others while or after they are written, and
read only when they are the running user's own private regular file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from reliability_helpers import REPO

from distributed_ondisk.errors import InputError
from distributed_ondisk.rpc import Client, Server, load_secret, write_secret_file
from distributed_ondisk.rpc.demo import EchoService
from distributed_ondisk.rpc.secret import read_secret_file

pytestmark = pytest.mark.integration


def poll_modes(directory: Path, stop: threading.Event, seen: list) -> None:
    """Record (name, mode) of every file that ever shows group/other bits."""
    while not stop.is_set():
        for entry in os.scandir(directory):
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # a temporary renamed away between listing and stat
            seen.append((entry.name, stat.S_IMODE(mode)))


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_keygen_never_exposes_a_secret_file(tmp_path, umask):
    stop, seen = threading.Event(), []
    poller = threading.Thread(target=poll_modes, args=(tmp_path, stop, seen))
    poller.start()
    script = (
        f"import os, sys; os.umask({umask}); sys.argv = ['rpc.py', 'keygen', ''];"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"from distributed_ondisk.rpc import write_secret_file\n"
        f"for i in range(100): write_secret_file({str(tmp_path)!r} + f'/s{{i}}.secret')"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        # and through the real CLI, a few times
        for i in range(5):
            subprocess.run(
                [
                    "sh",
                    "-c",
                    (
                        f"umask {umask:03o}; exec {sys.executable} "
                        f"{REPO / 'rpc.py'} keygen {tmp_path / f'cli{i}.secret'}"
                    ),
                ],
                check=True,
                timeout=60,
                capture_output=True,
            )
    finally:
        stop.set()
        poller.join()
    assert len(seen) > 100, "the poller did not watch the files"
    exposed = [(n, oct(m)) for n, m in seen if m & 0o077]
    assert not exposed, exposed[:5]
    assert len(list(tmp_path.glob("*.secret"))) == 105
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".secret")]


def test_reading_refuses_links_others_files_short_env_secrets(tmp_path, monkeypatch):
    good = tmp_path / "good.secret"
    secret = write_secret_file(good)
    assert read_secret_file(good) == secret
    link = tmp_path / "link.secret"
    link.symlink_to(good)
    with pytest.raises(InputError, match="symbolic link"):
        read_secret_file(link)
    # loose modes and short files: tests/test_rpc_security.py::test_secret_file_modes_and_keygen
    monkeypatch.setenv("DISTRIBUTED_ONDISK_SECRET", "short")
    monkeypatch.delenv("DISTRIBUTED_ONDISK_SECRET_FILE", raising=False)
    with pytest.raises(InputError, match="at least 16"):
        load_secret()
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.secret"
        theirs.write_bytes(secret)
        theirs.chmod(0o600)
        os.chown(theirs, 65534, 65534)  # nobody
        with pytest.raises(InputError, match="owned by uid 65534"):
            read_secret_file(theirs)


def test_code_paths_refuse_short_secrets():
    with pytest.raises(InputError, match="Server\\(secret=...\\).*at least 16"):
        Server(EchoService(), secret=b"short")
    with (
        Server(EchoService(), secret=b"0123456789abcdef0123") as server,
        pytest.raises(InputError, match="Client\\(secret=...\\).*at least 16"),
    ):
        Client(server.address, secret=b"short")
