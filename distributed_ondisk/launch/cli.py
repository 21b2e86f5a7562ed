"""The launcher's entry points: every target of ``run_on_cluster.bash``, and the
``python -m distributed_ondisk pipeline`` subcommand.

``python -m distributed_ondisk.launch.cli TARGET [ARGS]`` is what the bash front execs:
settings from the environment (:mod:`distributed_ondisk.launch.settings`).
:func:`cli` takes the same settings as flags (``--data``, ``--workdir``, ``--k``...),
falling back to the environment, and runs ``local_pipeline`` unless told another target.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.launch import commands, pipeline, steps
from distributed_ondisk.launch.local import exit_on_signals
from distributed_ondisk.launch.pipeline import Run, prepare_data
from distributed_ondisk.launch.settings import Settings, add_setting_args, settings_from_args

USAGE = """\
usage: bash run_on_cluster.bash TARGET   (settings: environment variables, see --help of
       python -m distributed_ondisk pipeline; the same names in capitals)

  demo                      install, then run local_pipeline on the bundled GloVe 6B 50-d vectors
                            (HOLDOUT=1: NQ shuffled words held out of the index as queries)
  local_pipeline            every stage on this machine: k-means over local RPC servers, trained
                            index, vslices and hslices in parallel, search servers, recall report
  pipeline                  every stage as Slurm jobs chained with --dependency=afterok
  test_kmeans_0             k-means in process with faiss.Kmeans (baseline)
  test_kmeans_1             k-means in process with this toolkit's loop (all local GPUs or CPU)
  test_kmeans_2             k-means over KMEANS_SERVERS local servers over RPC
  slurm_distributed_kmeans  k-means servers on KMEANS_NODES nodes x SERVERS_PER_NODE (srun);
                            task 0 also runs the client
  clustering                the full-size k-means writing WORKDIR/centroids.npy (local servers)
  make_trained_index        the empty trained index (Slurm job)
  make_index_vslices        all vertical slices as one Slurm array job
  make_index_hslices        all horizontal shards as one array job after the vslices
                            (after the job VSLICES_JOB when set)
  run_search_servers        SEARCH_SERVERS search servers (Slurm), addresses in WORKDIR/search_servers
  plan [options]            size a cluster: bytes, RAM, disk, time per stage (plan --help)
"""
PUBLIC = [line.split()[0] for line in USAGE.split("\n\n", 1)[1].splitlines() if line[:3].strip()]
log = logging.getLogger("run_on_cluster")


def demo(run: Run) -> None:
    pipeline.ensure_installed(run)
    # the demo holds its queries out (explicitly: every other target indexes all of
    # DATA), a shuffled sample since GloVe is sorted by word frequency
    run = Run(run.s.replace(holdout=True, shuffle=run.s.shuffle or run.s.data == "bundled"))
    pipeline.local_pipeline(run)
    r = json.loads(run.wd.report.read_text("utf-8"))
    print("queries:", r["queries"])
    for p in r["search"]:
        print(
            f"{p['variant']:<12} nprobe {p['nprobe']:>4}  R@1 {p['recall_at_1']:.3f}  "
            f"R@10 {p['recall_at_10']:.3f}  {p['qps']:>9.0f} QPS"
        )


def _exec(run: Run, argv: list[str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, run.env)


def _submit(run: Run, stage: str, after: str | None = None) -> None:
    print(pipeline.slurm_backend(run).submit(pipeline.slurm_task(run, stage, after)).id)


def _test_kmeans_2(run: Run) -> None:
    pipeline.ensure_installed(run)
    pipeline.ensure_secret(run)
    prepare_data(run)
    with run.servers() as group:
        addrs = pipeline.kmeans_servers(run, group, run.s.kmeans_servers)
        run.local().run(pipeline.Task("kmeans", tuple(commands.kmeans_test_client(run.s, addrs))))


def _test_kmeans(run: Run, level: int) -> None:
    pipeline.ensure_installed(run)
    prepare_data(run)
    _exec(run, commands.kmeans_test(run.s, *run.data(), level))


def _secret_prepare(run: Run) -> None:
    pipeline.ensure_secret(run)
    prepare_data(run)


def _clustering(run: Run) -> None:
    _secret_prepare(run)
    with pipeline.timed(run, "kmeans"):
        pipeline.run_kmeans_local(run)


def _index_arg(args: Sequence[str], target: str) -> int:
    if len(args) != 1 or not args[0].isdigit():
        raise InputError(f"{target} takes one slice number, got {' '.join(args) or 'none'}")
    return int(args[0])


TARGETS: dict[str, Callable[[Run, Sequence[str]], object]] = {
    "demo": lambda run, a: demo(run),
    "local_pipeline": lambda run, a: pipeline.local_pipeline(run),
    "pipeline": lambda run, a: print(pipeline.slurm_pipeline(run)),
    "test_kmeans_0": lambda run, a: _test_kmeans(run, 0),
    "test_kmeans_1": lambda run, a: _test_kmeans(run, 1),
    "test_kmeans_2": lambda run, a: _test_kmeans_2(run),
    "clustering": lambda run, a: _clustering(run),
    "slurm_distributed_kmeans": lambda run, a: (_secret_prepare(run), _submit(run, "kmeans")),
    "make_trained_index": lambda run, a: (_secret_prepare(run), _submit(run, "trained_index")),
    "make_index_vslices": lambda run, a: (run.data(), _submit(run, "vslices")),
    "make_index_hslices": lambda run, a: (
        run.data(),
        _submit(run, "hslices", os.environ.get("VSLICES_JOB") or None),
    ),
    "run_search_servers": lambda run, a: (prepare_data(run), _submit(run, "search_servers")),
    # job bodies (what the Slurm jobs above run) and local array copies
    "slurm_kmeans_step": lambda run, a: _exec(
        run, ["srun", *commands.launcher_argv(run.s.python, "slurm_within_kmeans_server")]
    ),
    "slurm_within_kmeans_server": lambda run, a: steps.within_kmeans_server(run),
    "slurm_trained_index": lambda run, a: steps.trained_index(run),
    "slurm_vslice": lambda run, a: steps.vslice(run),
    "slurm_hslice": lambda run, a: steps.hslice(run),
    "slurm_search": lambda run, a: steps.search(run),
    "slurm_search_servers": lambda run, a: _exec(
        run, ["srun", *commands.launcher_argv(run.s.python, "slurm_within_search_server")]
    ),
    "slurm_within_search_server": lambda run, a: steps.within_search_server(run),
    "vslice": lambda run, a: steps.vslice(run, _index_arg(a, "vslice"), timing=False),
    "hslice": lambda run, a: steps.hslice(run, _index_arg(a, "hslice"), timing=False),
}


def run_target(target: str, args: Sequence[str], settings: Settings) -> int:
    if target == "plan":
        from distributed_ondisk.plan.cli import cli as plan_cli

        return int(plan_cli(list(args)) or 0)
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; targets: {', '.join(PUBLIC)}")
    TARGETS[target](Run(settings), args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``run_on_cluster.bash TARGET [ARGS]``: settings from the environment."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("", "-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] not in TARGETS and argv[0] != "plan":
        print(USAGE, end="", file=sys.stderr)
    ap = argparse.ArgumentParser(prog="run_on_cluster.bash", add_help=False)
    ap.add_argument("target")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    exit_on_signals()
    return run_main(ap, lambda a: run_target(a.target, a.args, Settings.from_env()), argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distributed_ondisk pipeline",
        description="run the pipeline (default: local_pipeline, every stage on this machine); "
        "every setting not given as a flag is read from the environment variable of the "
        "same name in capitals (as run_on_cluster.bash does), else its default",
    )
    ap.add_argument(
        "target",
        nargs="?",
        default="local_pipeline",
        choices=[t for t in PUBLIC if t != "plan"],
        help="what to run (default local_pipeline; 'pipeline' submits to Slurm)",
    )
    add_setting_args(ap)
    add_logging_args(ap)
    return ap


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m distributed_ondisk pipeline --data X --workdir W [--k 1024 ...]``."""
    exit_on_signals()
    return run_main(build_parser(), lambda a: run_target(a.target, [], settings_from_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
