"""Launcher settings (the run_on_cluster.bash variables) and the stage command lines:
defaults, environment, flags, and the exact command lines the reliability suite runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from distributed_ondisk.errors import InputError
from distributed_ondisk.launch import commands
from distributed_ondisk.launch.cli import PUBLIC, TARGETS, build_parser
from distributed_ondisk.launch.settings import Settings, settings_from_args
from distributed_ondisk.workdir import Workdir

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
import reliability_helpers as rh


def test_defaults_are_the_bash_defaults(tmp_path):
    s = Settings.from_env({"WORKDIR": str(tmp_path / "w")})
    assert (s.k, s.niter, s.nvslices, s.nhslices, s.nq, s.encoder) == (1024, 10, 4, 2, 10000, "SQ6")
    assert (s.nprobe, s.slurm_time, s.gpu, s.wait_timeout) == ("1,4,16,64", "4:00:00", -2, 600)
    assert s.ncores == len(os.sched_getaffinity(0)) and s.train_nt == s.ncores
    assert s.secret_file == str(tmp_path / "w" / "rpc.secret")
    assert s.python == sys.executable and not s.holdout and s.data == "bundled"


def test_environment_empty_means_default_and_flags_win(tmp_path):
    env = {"K": "64", "NITER": "", "HOLDOUT": "0", "WORKDIR": "rel", "NCORES": "3"}
    s = Settings.from_env(env)
    assert s.k == 64 and s.niter == 10 and s.holdout  # bash: [ -n "$HOLDOUT" ]
    assert s.workdir == os.path.realpath("rel") and s.train_nt == 3
    with pytest.raises(InputError, match="K='x': expected an integer"):
        Settings.from_env({"K": "x"})
    args = build_parser().parse_args(["--k", "7", "--data", "d.npy", "--shuffle"])
    s = settings_from_args(args, env)
    assert (s.k, s.data, s.shuffle, s.ncores) == (7, "d.npy", True, 3)
    assert args.target == "local_pipeline"
    back = Settings.from_env(s.to_env())
    assert back == s  # what a Slurm job reads is what was resolved at submission


def test_every_listed_target_exists():
    assert set(PUBLIC) - {"plan"} <= set(TARGETS)
    for t in ("demo", "local_pipeline", "pipeline", "test_kmeans_2", "run_search_servers"):
        assert t in PUBLIC


def reliability_settings(w: Path) -> Settings:
    env = dict(rh.SETTINGS, WORKDIR=str(w), PYTHON="python")
    return Settings.from_env(env)


def test_stage_commands_are_the_reliability_suites(tmp_path):
    """The command lines tests/reliability replays by hand are the launcher's, exactly."""
    w = tmp_path / "w"
    s, wd, db = reliability_settings(w), Workdir.from_arg(w), w / "data.fvecs"

    def script_form(argv: list[str]) -> list[str]:
        """``python -m distributed_ondisk train ARGS`` as ``make_trained_index.py ARGS``."""
        assert argv[0] == "python"
        if argv[1] == "-m":
            assert argv[2] == "distributed_ondisk"
            return [commands.STAGE_COMMAND[argv[3]], *argv[4:]]
        return [Path(argv[1]).name, *argv[2:]]

    servers = ["h:1", "h:2"]
    assert script_form(commands.kmeans_client(s, wd, servers, s.ncores)) == rh.stage_command(
        w, "kmeans_client", servers=servers
    )
    assert script_form(commands.trained(s, wd, db, rh.N_DB)) == rh.stage_command(w, "trained")
    for i in range(rh.NV):
        got = script_form(commands.vslice(s, wd, db, rh.N_DB, i, 1))
        assert got == rh.stage_command(w, "vslice", i)
    for j in range(rh.NH):
        assert script_form(commands.hslice(s, wd, j, 1)) == rh.stage_command(w, "hslice", j)


def test_server_commands_split_rows_and_shards(tmp_path):
    s = reliability_settings(tmp_path).replace(nhslices=5)
    wd = Workdir.from_arg(tmp_path)
    ranges = []
    for i in range(3):
        argv = commands.kmeans_server(s, tmp_path / "d", 10, i, 3, "127.0.0.1", tmp_path / "a", 2)
        ranges.append((argv[argv.index("--i0") + 1], argv[argv.index("--i1") + 1]))
    assert ranges == [("0", "3"), ("3", "6"), ("6", "10")]  # split_range's parts
    shards = [commands.shards_of_server(s, wd, i, 2) for i in range(2)]
    assert shards == [[wd.hslice(j, 5) for j in (0, 2, 4)], [wd.hslice(j, 5) for j in (1, 3)]]
