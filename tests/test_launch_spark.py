"""The Spark backend on a real local Spark (``local[2]``): the same Task, array copies with
their index and CPUs, exit statuses back in order, failures named like the local ones."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from distributed_ondisk.launch.backend import TASK_INDEX, Task, TaskFailed

pytest.importorskip("pyspark", reason="pyspark not installed: pip install '.[spark]'")
pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend():
    from pyspark.sql import SparkSession

    from distributed_ondisk.launch.spark import SparkBackend

    session = (
        SparkSession.builder.master("local[2]")
        .appName("test_launch_spark")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield SparkBackend(session, env={"STAGE_SETTING": "48"})
    session.stop()
    logging.getLogger("py4j").setLevel(logging.WARNING)


def test_array_copies_run_as_spark_tasks(backend, tmp_path):
    code = (
        "import json, os, sys; json.dump([sys.argv[1], os.environ['TASK_ID'], "
        "os.environ['NT_TASK'], os.environ['STAGE_SETTING']], "
        f"open({str(tmp_path)!r} + '/out_' + sys.argv[1], 'w')); "
        "sys.exit(7 if sys.argv[1] == '2' else 0)"
    )
    task = Task("copies", (sys.executable, "-c", code, TASK_INDEX), cpus=2, array=4)
    job = backend.submit(task)
    assert job.returncodes == [0, 0, 7, 0]
    outs = [json.loads((tmp_path / f"out_{i}").read_text()) for i in range(4)]
    assert outs == [[str(i), str(i), "2", "48"] for i in range(4)]
    with pytest.raises(TaskFailed, match=r"copies 2 \(exit 7\)"):
        backend.wait(job)
    one = Task("one", (sys.executable, "-c", "print('hi')"), log=tmp_path / "one.log")
    assert backend.run(one).returncodes == [0]
    assert (tmp_path / "one.log").read_text() == "hi\n"
