"""The Slurm backend's job scripts, as text, without a cluster: #SBATCH lines, array
ranges, dependencies, srun lines, exported settings; and the pipeline's chain of
submissions through a fake sbatch.  (tests/test_pipeline_slurm.py runs them for real.)"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from distributed_ondisk.errors import ClusterError, InputError
from distributed_ondisk.launch.backend import TASK_INDEX, Task
from distributed_ondisk.launch.pipeline import Run, slurm_pipeline, slurm_task
from distributed_ondisk.launch.settings import Settings
from distributed_ondisk.launch.slurm import (
    SlurmBackend,
    SlurmOptions,
    batch_script,
    parse_job_id,
    sbatch_options,
)


def parse(script: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(#SBATCH options, exported variables, other lines) of a job script."""
    sbatch, exports, body = {}, {}, []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            k, _, v = line[len("#SBATCH ") :].partition("=")
            assert k not in sbatch, f"{k} twice"
            sbatch[k] = v
        elif line.startswith("export "):
            k, _, v = line[len("export ") :].partition("=")
            exports[k] = shlex.split(v)[0] if v else ""
        else:
            body.append(line)
    return sbatch, exports, body


def opts(tmp_path: Path, **kw) -> SlurmOptions:
    return SlurmOptions(chdir=tmp_path, log_dir=tmp_path / "slurm", **kw)


def test_single_task_script(tmp_path):
    task = Task("trained_index", ("python3", "-m", "x", "a b"), cpus=4, after=("17",))
    script = batch_script(task, opts(tmp_path, time="1:00:00", exports={"K": "48", "Q": "it's"}))
    assert script.startswith("#!/bin/bash\n")
    sb, ex, body = parse(script)
    assert sb == {
        "--job-name": "trained_index",
        "--chdir": str(tmp_path),
        "--time": "1:00:00",
        "--output": f"{tmp_path}/slurm/%x_%A_%a.log",
        "--export": "ALL",
        "--ntasks": "1",
        "--cpus-per-task": "4",
        "--dependency": "afterok:17",
    }
    assert ex["K"] == "48" and ex["Q"] == "it's"  # quoted for the shell
    assert "TASK_ID" not in ex and ex["NT_TASK"] == "${SLURM_CPUS_PER_TASK:-1}"
    assert body == ["set -euo pipefail", "exec python3 -m x 'a b'"]


def test_array_script_limit_and_index(tmp_path):
    task = Task("vslices", ("run", "vslice", TASK_INDEX), array=5, max_parallel=2, after=("3", "4"))
    sb, ex, body = parse(batch_script(task, opts(tmp_path, partition="gpu")))
    assert sb["--array"] == "0-4%2" and sb["--partition"] == "gpu"
    assert sb["--dependency"] == "afterok:3:4"
    assert ex["TASK_ID"] == "$SLURM_ARRAY_TASK_ID"
    assert body[-1] == 'exec run vslice "$TASK_ID"'
    unlimited = Task("hslices", ("run",), array=1)
    assert "--array=0-0" in sbatch_options(unlimited, opts(tmp_path))


def test_step_script_runs_srun_over_nodes(tmp_path):
    task = Task(
        "kmeans", ("py", "t"), cpus=2, nodes=3, ntasks_per_node=4, gpus_per_node=1, step=True
    )
    sb, _, body = parse(batch_script(task, opts(tmp_path)))
    assert (sb["--nodes"], sb["--ntasks-per-node"], sb["--gres"]) == ("3", "4", "gpu:1")
    assert "--ntasks" not in sb and sb["--cpus-per-task"] == "2"
    assert body[-1] == "exec srun py t"
    # the job script itself is valid bash
    path = tmp_path / "job.sh"
    path.write_text(batch_script(task, opts(tmp_path)))
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


def test_task_validation_and_job_id():
    with pytest.raises(InputError, match="letters"):
        Task("bad name", ("x",))
    with pytest.raises(InputError, match="array of 0"):
        Task("t", ("x",), array=0)
    assert parse_job_id("123\n") == parse_job_id("123;cluster") == "123"
    with pytest.raises(ClusterError, match="not a job id"):
        parse_job_id("sbatch: error")


def settings(tmp_path: Path, **kw) -> Settings:
    base = {"workdir": str(tmp_path / "w"), "python": "/py", "ncores": 8, "nvslices": 3}
    base.update(kw)
    return Settings(**base).resolved()


def test_pipeline_jobs_match_the_settings(tmp_path):
    run = Run(
        settings(
            tmp_path,
            kmeans_nodes=2,
            servers_per_node=3,
            cpus_per_task=2,
            slurm_gpus_per_node=1,
            max_parallel_tasks=2,
            search_servers=4,
        )
    )
    o = opts(tmp_path)
    km = parse(batch_script(slurm_task(run, "kmeans"), o))
    assert km[0]["--nodes"] == "2" and km[0]["--ntasks-per-node"] == "3"
    assert km[0]["--gres"] == "gpu:1" and "--dependency" not in km[0]
    assert km[2][-1] == "exec srun /py -m distributed_ondisk.launch.cli slurm_within_kmeans_server"
    vs = parse(batch_script(slurm_task(run, "vslices", "41"), o))
    assert (vs[0]["--array"], vs[0]["--dependency"]) == ("0-2%2", "afterok:41")
    assert vs[2][-1] == "exec /py -m distributed_ondisk.launch.cli slurm_vslice"
    hs = parse(batch_script(slurm_task(run, "hslices", "42"), o))
    assert hs[0]["--array"] == "0-1%2" and hs[0]["--cpus-per-task"] == "2"
    se = parse(batch_script(slurm_task(run, "search", "43"), o))
    assert se[0]["--cpus-per-task"] == "8" and "--array" not in se[0]  # NCORES
    ss = parse(batch_script(slurm_task(run, "search_servers"), o))
    assert ss[0]["--ntasks"] == "4" and ss[2][-1].startswith("exec srun ")


def fake_sbatch(tmp_path: Path) -> dict[str, str]:
    """An sbatch that records each script it gets and prints ids 100, 101, ..."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(
        "#!/bin/bash\n"
        f'd={tmp_path}/submitted; mkdir -p "$d"; n=$(ls "$d" | wc -l)\n'
        '[ "$1" = --parsable ] || exit 9\n'
        'cp "$2" "$d/$n.sh"; echo $((100 + n))\n'
    )
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


def test_pipeline_submits_a_chain(tmp_path):
    from distributed_ondisk.datasets import make_clustered
    from distributed_ondisk.vectors import write_vectors

    data = tmp_path / "x.fvecs"
    write_vectors(data, make_clustered(300, 4, seed=1))
    s = settings(tmp_path, data=str(data), nq=10, k=8, nhslices=2)
    env = fake_sbatch(tmp_path)
    run = Run(s)
    run.env.update(PATH=env["PATH"])
    last = slurm_pipeline(run)
    scripts = [parse((tmp_path / "submitted" / f"{i}.sh").read_text()) for i in range(5)]
    names = [sb["--job-name"] for sb, _, _ in scripts]
    assert names == ["kmeans", "trained_index", "vslices", "hslices", "search"]
    deps = [sb.get("--dependency") for sb, _, _ in scripts]
    assert deps == [None, "afterok:100", "afterok:101", "afterok:102", "afterok:103"]
    assert last == "104"
    for _, ex, _ in scripts:  # every job sees the settings resolved here
        assert ex["WORKDIR"] == s.workdir and ex["NCORES"] == "8" and ex["K"] == "8"
        assert ex["DISTRIBUTED_ONDISK_SECRET_FILE"] == s.secret_file
    assert (tmp_path / "w" / "dataset.json").is_file()  # prepared before submitting
    assert (tmp_path / "w" / "slurm" / "search.sbatch").is_file()  # what ran is kept


def test_backend_reports_sbatch_failure(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no sbatch at all
    backend = SlurmBackend(opts(tmp_path), env)
    with pytest.raises(ClusterError, match="sbatch not found"):
        backend.submit(Task("t", ("true",)))
