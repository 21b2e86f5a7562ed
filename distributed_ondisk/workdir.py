"""The one place that names the files of a work directory.

Every stage, the tests and ``run_on_cluster.bash`` get their paths here, so a
file is called the same everywhere.  Layout::

    WORKDIR/data.<ext>                      input vectors (or a symlink to them)
    WORKDIR/centroids.npy                   k-means output (k x d float32)
    WORKDIR/kmeans.checkpoint.npz           k-means checkpoint
    WORKDIR/trained.index                   empty trained index (+ .manifest.json)
    WORKDIR/vslices/vslice_0003_of_0016.index      vertical slice 3 of 16 (+ manifest)
    WORKDIR/hslices/hslice_0001_of_0004.index      horizontal shard 1 of 4 (+ manifest)
    WORKDIR/hslices/hslice_0001_of_0004.invlists   its on-disk inverted lists
    WORKDIR/ids/ids_0002_of_0016.parquet           build_index: id columns of piece 2 of 16
    WORKDIR/metric.json, WORKDIR/train.npy          build_index: metric, encoder's rows
    WORKDIR/search_report.json, WORKDIR/report.json
    WORKDIR/dataset.json, WORKDIR/queries.npy       prepared inputs (launch/prepare.py)
    WORKDIR/rpc.secret, WORKDIR/recall.png, WORKDIR/timings/, WORKDIR/slurm/
    WORKDIR/kmeans_servers/local/0.addr             a server's address (and .log)

Slice names carry the slice count, so builds with different splits never mix.
From the shell: ``python -m distributed_ondisk.workdir WORKDIR vslice 3 16``
prints the path of vslice 3 of 16 (keys: data centroids checkpoint trained
vslice hslice invlists manifest search_report report).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from distributed_ondisk.errors import InputError
from distributed_ondisk.ondisk.manifest import manifest_path

PathLike = Union[str, "os.PathLike[str]"]
DATA_EXTENSIONS = (".fvecs", ".bvecs", ".ivecs", ".npy", ".fbin", ".u8bin", ".i8bin", ".ibin")


def _check_part(i: int, n: int, what: str) -> None:
    if n < 1 or not 0 <= i < n:
        raise InputError(f"{what} {i} of {n}: need n >= 1 and 0 <= i < n")


def _part(what: str, i: int, n: int, suffix: str) -> str:
    """``<what>_<i>_of_<n><suffix>``: the one naming of part i of n (vslices, hslices, ids)."""
    _check_part(i, n, what)
    return f"{what}_{i:04d}_of_{n:04d}{suffix}"


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def from_arg(cls, path: PathLike) -> Workdir:
        """From a command-line directory argument (need not exist yet)."""
        return cls(Path(os.path.expanduser(os.fspath(path))).absolute())

    def create(self) -> Workdir:
        for d in (self.root, self.vslice_dir, self.hslice_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def data(self, ext: str | None = None) -> Path:
        """The input vectors: ``data<ext>``, or the single existing ``data.*``."""
        if ext is not None:
            return self.root / f"data{ext if ext.startswith('.') else '.' + ext}"
        found = [
            self.root / f"data{e}" for e in DATA_EXTENSIONS if (self.root / f"data{e}").exists()
        ]
        if len(found) != 1:
            raise InputError(
                f"{self.root}: expected exactly one data file data.<ext> with ext in "
                f"{', '.join(DATA_EXTENSIONS)}, found {len(found)}"
            )
        return found[0]

    @property
    def centroids(self) -> Path:
        return self.root / "centroids.npy"

    @property
    def checkpoint(self) -> Path:
        return self.root / "kmeans.checkpoint.npz"

    @property
    def trained(self) -> Path:
        return self.root / "trained.index"

    @property
    def vslice_dir(self) -> Path:
        return self.root / "vslices"

    @property
    def hslice_dir(self) -> Path:
        return self.root / "hslices"

    def vslice(self, i: int, n: int) -> Path:
        return self.vslice_dir / _part("vslice", i, n, ".index")

    def vslices(self, n: int) -> list[Path]:
        return [self.vslice(i, n) for i in range(n)]

    def hslice(self, j: int, m: int) -> Path:
        return self.hslice_dir / _part("hslice", j, m, ".index")

    def hslice_invlists(self, j: int, m: int) -> Path:
        return self.hslice(j, m).with_suffix(".invlists")

    def hslices(self, m: int) -> list[Path]:
        return [self.hslice(j, m) for j in range(m)]

    @property
    def ids_dir(self) -> Path:
        return self.root / "ids"

    def ids(self, i: int, n: int) -> Path:
        """build_index's id columns of piece ``i`` of ``n`` (parquet, with the index id)."""
        return self.ids_dir / _part("ids", i, n, ".parquet")

    @property
    def metric(self) -> Path:
        """build_index's metric_type, d and largest norm (JSON)."""
        return self.root / "metric.json"

    @property
    def training_rows(self) -> Path:
        """build_index's temporary copy of the rows the encoder trains on."""
        return self.root / "train.npy"

    @staticmethod
    def manifest(path: PathLike) -> Path:
        return manifest_path(path)

    @property
    def search_report(self) -> Path:
        return self.root / "search_report.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"

    @property
    def queries(self) -> Path:
        return self.root / "queries.npy"

    @property
    def secret(self) -> Path:
        return self.root / "rpc.secret"

    @property
    def recall_plot(self) -> Path:
        return self.root / "recall.png"

    @property
    def timings_dir(self) -> Path:
        return self.root / "timings"

    @property
    def slurm_dir(self) -> Path:
        """Slurm job scripts and logs."""
        return self.root / "slurm"

    def servers_dir(self, kind: str, tag: str) -> Path:
        """Address files and logs of the ``kind`` servers ("kmeans", "search") of one
        launch (``tag``: "local", or "job_<id>" on Slurm)."""
        return self.root / f"{kind}_servers" / tag


def default_invlists_for(index_path: PathLike) -> Path:
    """Where a shard's on-disk lists go when not named: next to the index, ``.invlists``."""
    p = Path(index_path)
    return p.with_suffix(".invlists") if p.suffix == ".index" else p.with_name(p.name + ".invlists")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distributed_ondisk.workdir",
        description="print the path of one file of a work directory",
    )
    ap.add_argument("workdir")
    ap.add_argument(
        "key",
        choices=[
            "data",
            "centroids",
            "checkpoint",
            "trained",
            "vslice",
            "hslice",
            "invlists",
            "search_report",
            "report",
        ],
    )
    ap.add_argument("i", nargs="?", type=int, help="slice number (vslice/hslice/invlists)")
    ap.add_argument("n", nargs="?", type=int, help="number of slices (vslice/hslice/invlists)")
    ap.add_argument("--manifest", action="store_true", help="print the file's manifest path")
    args = ap.parse_args(argv)
    wd = Workdir.from_arg(args.workdir)
    try:
        if args.key in ("vslice", "hslice", "invlists"):
            if args.i is None or args.n is None:
                raise InputError(f"{args.key} needs a slice number and a slice count")
            fn = {"vslice": wd.vslice, "hslice": wd.hslice, "invlists": wd.hslice_invlists}
            path = fn[args.key](args.i, args.n)
        elif args.key == "data":
            path = wd.data()
        else:
            path = getattr(wd, args.key)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(manifest_path(path) if args.manifest else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
