"""Run a toolkit script (or ``-m module``) with a deterministic SIGKILL point.

    CRASH_AT=replace:2:before python crashpoint.py make_index_vslice.py ARGS...

The toolkit itself has no fault-injection hook, so this wrapper patches the few
calls that mark the interesting moments of a stage and SIGKILLs its own process
there (SIGKILL: no cleanup handler, no ``finally``, exactly like the OOM killer
or a node failure):

  start              before the script runs at all (early)
  fsync:N            before the Nth fsync of a temporary output: its bytes are
                     written but not yet durable nor renamed ("during the final write")
  replace:N:before   just before the Nth rename of a finished temporary over its
                     final name
  replace:N:after    just after it (the next file, e.g. the manifest, not yet written)
  dispatch:N         a server, when its Nth RPC call (ping excluded) arrives

Environment: CRASH_AT as above; CRASH_TRACE=FILE appends one JSON line per event
(to enumerate a stage's commit points); CRASH_ONCE=FILE makes the crash happen
once only (the file is created when it does), so the same command line run again
finishes.  Not a test: the tests in this directory run it as a subprocess.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys

_counts: dict[str, int] = {}
_AT = os.environ.get("CRASH_AT", "")
_TRACE = os.environ.get("CRASH_TRACE")
_ONCE = os.environ.get("CRASH_ONCE")


def _armed() -> bool:
    return not (_ONCE and os.path.exists(_ONCE))


def _die(event: str) -> None:
    if _ONCE:
        with open(_ONCE, "w") as f:
            f.write(event + "\n")
    sys.stderr.write(f"crashpoint: SIGKILL at {event}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _event(op: str, phase: str, detail: str) -> None:
    n = _counts.get(op + phase, 0) + 1
    _counts[op + phase] = n
    if _TRACE and phase != "after":
        with open(_TRACE, "a") as f:
            f.write(json.dumps({"op": op, "n": n, "detail": detail}) + "\n")
    want = _AT.split(":")
    if not _armed() or not want or want[0] != op or int(want[1]) != n:
        return
    if (want[2] if len(want) > 2 else "before") == phase:
        _die(f"{op}:{n}:{phase} ({detail})")


def _patch() -> None:
    real_replace, real_rename, real_fsync = os.replace, os.rename, os.fsync

    def replace(src, dst, *a, **k):
        _event("replace", "before", f"{os.fspath(dst)}")
        real_replace(src, dst, *a, **k)
        _event("replace", "after", f"{os.fspath(dst)}")

    def rename(src, dst, *a, **k):
        _event("replace", "before", f"{os.fspath(dst)}")
        real_rename(src, dst, *a, **k)
        _event("replace", "after", f"{os.fspath(dst)}")

    def fsync(fd):
        # Only temporaries of outputs count: fsyncs of directories (after a rename)
        # are not "during a write".
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if ".tmp-" in os.path.basename(name):
            _event("fsync", "before", name)
        real_fsync(fd)

    os.replace, os.rename, os.fsync = replace, rename, fsync

    if _AT.startswith("dispatch"):
        from distributed_ondisk.rpc import server as rpc_server

        real_dispatch = rpc_server.Server._dispatch

        def dispatch(self, method, args, kwargs, peer):
            if method not in ("ping", "methods"):
                _event("dispatch", "before", method)
            return real_dispatch(self, method, args, kwargs, peer)

        rpc_server.Server._dispatch = dispatch


def main() -> None:
    argv = sys.argv[1:]
    if not argv:
        sys.exit("usage: crashpoint.py SCRIPT [ARGS...] | -m MODULE [ARGS...]")
    if _AT == "start" and _armed():
        _die("start")
    _patch()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
