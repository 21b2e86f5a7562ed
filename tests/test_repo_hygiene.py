"""The repository is self-contained: nothing tracked cites a file that is not in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Built from pieces so that this file does not match itself.
FORBIDDEN = ("FAISS" + "_NOTES", "FAISS " + "notes", ".." + "/shared")


def tracked_texts() -> list[tuple[str, str]]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): the tracked files cannot be listed")
    texts = []
    for name in filter(None, out.decode().split("\0")):
        try:
            data = (REPO / name).read_bytes()
        except OSError:  # deleted in the work tree, not yet committed
            continue
        if b"\0" not in data[:8192]:
            texts.append((name, data.decode("utf-8", errors="replace")))
    assert texts, "git ls-files listed no readable text file"
    return texts


def test_no_reference_to_files_outside_the_repository():
    bad = [
        f"{name}:{n}: {line.strip()}"
        for name, text in tracked_texts()
        for n, line in enumerate(text.splitlines(), 1)
        if any(f.lower() in line.lower() for f in FORBIDDEN)
    ]
    assert not bad, "cites files that are not in the repository:\n" + "\n".join(bad)


def test_cited_docs_pages_exist():
    cited = {
        (name, m.group(0))
        for name, text in tracked_texts()
        for m in re.finditer(r"\bdocs/[\w.-]+\.md\b", text)
    }
    assert cited, "no file cites a docs/ page: the pattern is wrong"
    missing = sorted(f"{name} cites {page}" for name, page in cited if not (REPO / page).is_file())
    assert not missing, "\n".join(missing)
