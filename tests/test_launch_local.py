"""The local backend: array copies with their index and CPUs, the parallel limit, failures
named; servers awaited by ping and stopped on every way out, SIGTERM included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distributed_ondisk.errors import ClusterError
from distributed_ondisk.launch.backend import TASK_INDEX, Task, TaskFailed
from distributed_ondisk.launch.local import LocalBackend, ServerGroup
from distributed_ondisk.rpc import write_secret_file

REPO = Path(__file__).resolve().parents[1]


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(code))


def test_array_copies_get_index_and_cpus_within_the_limit(tmp_path):
    code = f"""
        import json, os, sys, time
        d = {str(tmp_path)!r}
        open(os.path.join(d, "run_" + sys.argv[1]), "w").close()
        live = len([f for f in os.listdir(d) if f.startswith("run_")])
        time.sleep(0.3)
        json.dump([sys.argv[1], os.environ["TASK_ID"], os.environ["NT_TASK"], live],
                  open(os.path.join(d, "out_" + sys.argv[1]), "w"))
        os.remove(os.path.join(d, "run_" + sys.argv[1]))
    """
    task = Task("copies", (*py(code), TASK_INDEX), cpus=3, array=5, max_parallel=2)
    job = LocalBackend(max_parallel=8).run(task)
    assert job.returncodes == [0] * 5
    outs = [json.loads((tmp_path / f"out_{i}").read_text()) for i in range(5)]
    assert [o[:3] for o in outs] == [[str(i), str(i), "3"] for i in range(5)]
    assert max(o[3] for o in outs) <= 2


def test_failed_copies_are_named_and_the_others_run(tmp_path):
    code = f"""
        import sys
        open({str(tmp_path)!r} + "/ran_" + sys.argv[1], "w").close()
        sys.exit(3 if sys.argv[1] in ("1", "2") else 0)
    """
    task = Task("copies", (*py(code), TASK_INDEX), array=4, log=tmp_path / "c_{task_id}.log")
    backend = LocalBackend(max_parallel=2)
    job = backend.submit(task)
    assert job.failed == [1, 2] and sorted(p.name for p in tmp_path.glob("ran_*")) == [
        f"ran_{i}" for i in range(4)
    ]
    with pytest.raises(TaskFailed, match=r"copies 1 \(exit 3\), 2 \(exit 3\)"):
        backend.wait(job)
    assert (tmp_path / "c_3.log").exists()
    with pytest.raises(TaskFailed, match="task one failed: exit 5"):
        backend.run(Task("one", py("raise SystemExit(5)")))


ECHO_SERVER = """
import sys
from pathlib import Path
from distributed_ondisk.rpc import Server, load_secret
from distributed_ondisk.rpc.demo import EchoService
srv = Server(EchoService(), secret=load_secret(sys.argv[1])).start()
Path(sys.argv[2]).write_text(srv.address)
srv.serve_forever()
"""


def echo_server(tmp_path: Path, secret: Path, name: str) -> tuple[list[str], Path, Path]:
    ready = tmp_path / f"{name}.addr"
    return (
        [sys.executable, "-c", ECHO_SERVER, str(secret), str(ready)],
        ready,
        ready.with_suffix(".log"),
    )


@pytest.mark.integration
def test_servers_awaited_then_stopped_even_on_error(tmp_path):
    secret = tmp_path / "s"
    write_secret_file(secret)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    with pytest.raises(RuntimeError, match="the stage failed"), ServerGroup(env, secret, 60) as g:
        for i in range(2):
            procs.append(g.start(f"echo {i}", *echo_server(tmp_path, secret, str(i))).proc)
        addrs = g.await_all()
        assert all(a.startswith("127.0.0.1:") for a in addrs)
        raise RuntimeError("the stage failed")
    assert all(p.poll() is not None for p in procs)


@pytest.mark.integration
def test_server_that_dies_before_listening_is_named(tmp_path):
    group = ServerGroup(dict(os.environ), None, 30)
    with group:
        s = group.start("bad server", py("raise SystemExit(4)"), tmp_path / "a", tmp_path / "l")
        with pytest.raises(ClusterError, match=r"bad server .* exited 4 before listening"):
            group.await_ready(s)


@pytest.mark.integration
def test_sigterm_stops_started_servers(tmp_path):
    """A launcher killed by SIGTERM leaves no server behind (the bash EXIT trap's job)."""
    pidfile = tmp_path / "server.pid"
    launcher = f"""
        import os, sys, time
        from pathlib import Path
        from distributed_ondisk.launch.local import ServerGroup, exit_on_signals
        exit_on_signals()
        with ServerGroup(dict(os.environ), None, 30) as g:
            s = g.start("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"],
                        Path({str(tmp_path / 'never')!r}), Path({str(tmp_path / 'log')!r}))
            Path({str(pidfile)!r}).write_text(str(s.proc.pid))
            time.sleep(300)
    """
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(py(launcher), env=env)
    deadline = time.monotonic() + 60
    while not pidfile.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    server_pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # reaped by the launcher, so gone at once; allow a moment
            os.kill(server_pid, 0)
            time.sleep(0.05)
