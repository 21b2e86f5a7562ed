"""Shared fixtures' workers for the build tests: seeded clustered data, centroids from
faiss.Kmeans, and a whole small pipeline run through the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

from distributed_ondisk.stages.merge import MergeJob, merge_hslice
from distributed_ondisk.stages.train import TrainedIndexConfig, make_trained_index
from distributed_ondisk.stages.vslice import VsliceJob, make_vslice
from distributed_ondisk.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]


def clustered(n: int, d: int, seed: int = 0, nclusters: int = 50) -> np.ndarray:
    rs = np.random.RandomState(seed)
    centers = rs.randn(nclusters, d) * 4
    return (centers[rs.randint(nclusters, size=n)] + rs.randn(n, d)).astype(np.float32)


def make_workdir(
    root: Path,
    n: int = 20000,
    d: int = 32,
    k: int = 64,
    seed: int = 0,
    cfg: TrainedIndexConfig | None = None,
) -> tuple[Workdir, np.ndarray]:
    wd = Workdir.from_arg(root).create()
    x = clustered(n, d, seed)
    np.save(wd.data(".npy"), x)
    km = faiss.Kmeans(d, k, niter=8, seed=seed + 1)
    km.train(x[: min(n, 100 * k)])
    np.save(wd.centroids, km.centroids)
    make_trained_index(
        wd.centroids, wd.data(), wd.trained, cfg or TrainedIndexConfig(), 0, min(n, 10000)
    )
    return wd, x


def build_all(wd: Workdir, nv: int, nh: int, threads: int = 2, **merge_kw) -> None:
    for i in range(nv):
        make_vslice(
            VsliceJob(
                wd.trained,
                wd.data(),
                wd.vslice(i, nv),
                nslice=nv,
                slice_no=i,
                block_rows=3000,
                threads=threads,
            )
        )
    for j in range(nh):
        merge_hslice(
            MergeJob([str(wd.vslice_dir)], wd.hslice(j, nh), nslice=nh, slice_no=j, **merge_kw)
        )


def reference_index(wd: Workdir, x: np.ndarray) -> faiss.Index:
    """The same data added in RAM in one go to the same trained index (through the
    same row-deterministic transform as the slices, see vslice.transform_rows)."""
    from distributed_ondisk.ondisk.trained import load_trained_index
    from distributed_ondisk.stages.vslice import add_rows

    index = load_trained_index(wd.trained)[0]
    add_rows(index, x, np.arange(len(x), dtype=np.int64))
    return index


def search(index: faiss.Index, q: np.ndarray, nprobe: int, k: int = 10):
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index.search(q, k)


def run_script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / name), *map(str, args)],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_vslice(src: Path, dst: Path) -> Path:
    """A copy of a vslice with its manifest (to damage without touching the original)."""
    import shutil

    from distributed_ondisk.ondisk import manifest as mf

    shutil.copy(src, dst)
    shutil.copy(mf.manifest_path(src), mf.manifest_path(dst))
    return dst


def flip_byte(path: Path, pos: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ mask]))
