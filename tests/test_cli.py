"""The console CLI: ``distributed-ondisk`` lists every stage, each stage answers
``--help`` with the flags of the script it stands beside, the scripts are thin
wrappers over the same functions, and a missing subcommand module is one line."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import runpy
import sys

import pytest
from build_helpers import REPO

from distributed_ondisk import __main__ as dmain
from distributed_ondisk.search import cli as search_cli
from distributed_ondisk.stages import cli as stages_cli

#: subcommand -> the top-level script taking the same flags
SCRIPT_OF = {
    "kmeans": "distributed_kmeans.py",
    "train": "make_trained_index.py",
    "vslice": "make_index_vslice.py",
    "merge": "merge_to_ondisk.py",
    "search": "combined_index.py",
    "serve": "search_server.py",
    "rpc": "rpc.py",
}
PIPELINE_ORDER = [
    "plan",
    "kmeans",
    "train",
    "vslice",
    "merge",
    "search",
    "serve",
    "pipeline",
    "build",
    "rpc",
]


def _available(name: str) -> bool:
    module = dmain.SUBCOMMANDS[name][0].split(":")[0]
    return importlib.util.find_spec(module) is not None


def _run(func, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = func(*args)
        except SystemExit as e:  # argparse's --help
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _after_usage(text: str) -> str:
    """Help text from the first blank line on: the usage line wraps by prog length."""
    return text[text.index("\n\n") :]


def test_help_lists_every_stage_in_pipeline_order():
    rc, out, _ = _run(dmain.main, ["--help"])
    assert rc == 0
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")]
    assert listed == PIPELINE_ORDER
    for ln in out.splitlines():
        if ln.startswith("  "):
            assert len(ln.split()) > 2  # one line of help each
    assert _run(dmain.main, [])[1] == out


def test_unknown_subcommand_is_refused_with_the_list():
    rc, _, err = _run(dmain.main, ["nosuch"])
    assert rc == 2 and err.startswith("error: unknown subcommand 'nosuch'") and "kmeans" in err


@pytest.mark.parametrize("name", PIPELINE_ORDER)
def test_every_subcommand_shows_its_flags(name):
    if not _available(name):
        pytest.skip(f"{name}: {dmain.SUBCOMMANDS[name][0]} is not in this checkout yet")
    rc, out, err = _run(dmain.main, [name, "--help"])
    assert rc == 0, err
    usage = out.splitlines()[0]
    assert usage.startswith("usage: ") and f" {name} " in usage
    module, func = dmain.SUBCOMMANDS[name][0].split(":")
    if "prog" in inspect.signature(getattr(importlib.import_module(module), func)).parameters:
        assert usage.startswith(f"usage: distributed-ondisk {name} ")
    assert "--" in _after_usage(out)


@pytest.mark.parametrize("name", sorted(SCRIPT_OF))
def test_subcommand_help_is_the_scripts_help(name, monkeypatch):
    script = REPO / SCRIPT_OF[name]
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    rc, script_help, _ = _run(runpy.run_path, str(script), None, "__main__")
    assert rc == 0 and script_help.startswith(f"usage: {SCRIPT_OF[name]} ")
    rc, sub_help, _ = _run(dmain.main, [name, "--help"])
    assert rc == 0 and _after_usage(sub_help) == _after_usage(script_help)


@pytest.mark.parametrize(
    "script,doc",
    [
        ("make_trained_index.py", stages_cli.TRAIN_DOC),
        ("make_index_vslice.py", stages_cli.VSLICE_DOC),
        ("merge_to_ondisk.py", stages_cli.MERGE_DOC),
        ("combined_index.py", search_cli.SEARCH_DOC),
        ("search_server.py", search_cli.SERVE_DOC),
    ],
)
def test_scripts_are_thin_and_keep_their_docstrings(script, doc):
    tree = ast.parse((REPO / script).read_text())
    assert ast.get_docstring(tree, clean=False) == doc
    # docstring, imports and the __main__ guard: no code of their own
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defs and len(tree.body) <= 5


def test_missing_subcommand_module_is_one_line(monkeypatch):
    monkeypatch.setitem(
        dmain.SUBCOMMANDS, "ghost", ("distributed_ondisk.no_such_module:cli", "not here")
    )
    rc, out, _ = _run(dmain.main, ["--help"])
    assert rc == 0 and "ghost" in out  # still listed
    rc, _, err = _run(dmain.main, ["ghost", "--x"])
    assert rc == 2 and err.count("\n") == 1
    assert err == (
        "error: subcommand 'ghost' is not available in this install "
        "(distributed_ondisk.no_such_module is missing)\n"
    )


def test_missing_dependency_of_a_subcommand_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "needy_cli.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(dmain.SUBCOMMANDS, "needy", ("needy_cli:cli", "x"))
    rc, _, err = _run(dmain.main, ["needy"])
    assert rc == 2 and err == (
        "error: subcommand 'needy' needs the module 'no_such_dependency_xyz', "
        "which is not installed\n"
    )


def test_stage_errors_are_one_line_with_status_2(tmp_path):
    rc, _, err = _run(dmain.main, ["train", "--centroids", str(tmp_path / "c.npy")])
    assert rc == 2 and err == "error: need --centroids, --indata and --out (or --workdir)\n"
