"""k-means checkpoints: centroids + iteration + RNG state + what they were made from.

One ``.npz`` (no pickle) written atomically after every iteration: a crash at
any moment leaves the previous complete checkpoint.  ``meta`` records the
configuration and a fingerprint of the data, so ``--resume`` refuses a
checkpoint made from other data, another dimension or another k with a message
that says which.  The RNG state makes the resumed run draw exactly what the
uninterrupted run would have (empty-cluster splits).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any, Union

import numpy as np

from distributed_ondisk.atomic import atomic_open
from distributed_ondisk.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "distributed_ondisk.kmeans.checkpoint/1"
#: Keys of ``meta`` that must match to resume, with what they mean in messages.
MUST_MATCH = {
    "d": "dimension",
    "n": "number of vectors",
    "k": "k",
    "seed": "seed",
    "max_points_per_centroid": "max_points_per_centroid",
    "n_train": "training rows",
    "data_fingerprint": "data fingerprint",
}


@dataclasses.dataclass
class Checkpoint:
    centroids: np.ndarray  # float32 (k, d), after `iteration` iterations
    iteration: int  # completed iterations
    rng_state: dict
    meta: dict  # see MUST_MATCH
    stats: list = dataclasses.field(default_factory=list)


def save_checkpoint(path: PathLike, ckpt: Checkpoint) -> None:
    header = {
        "format": FORMAT,
        "iteration": ckpt.iteration,
        "rng_state": ckpt.rng_state,
        "meta": ckpt.meta,
        "stats": ckpt.stats,
    }
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            centroids=np.ascontiguousarray(ckpt.centroids, np.float32),
            header=np.array(json.dumps(header)),
        )


def load_checkpoint(path: PathLike) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as z:
            centroids = np.array(z["centroids"])
            header: Any = json.loads(str(z["header"][()]))
    except FileNotFoundError as e:
        raise InputError(
            f"checkpoint {path} does not exist: nothing to resume "
            "(run without --resume to start)"
        ) from e
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{path} is not a readable k-means checkpoint: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a k-means checkpoint of this toolkit "
            f"(format {header.get('format') if isinstance(header, dict) else '?'})"
        )
    ckpt = Checkpoint(
        centroids,
        int(header["iteration"]),
        header["rng_state"],
        header["meta"],
        header.get("stats", []),
    )
    k, d = ckpt.meta.get("k"), ckpt.meta.get("d")
    if centroids.dtype != np.float32 or centroids.shape != (k, d):
        raise InputError(
            f"{path}: centroids {centroids.dtype} {centroids.shape} do not match "
            f"its header (k={k}, d={d})"
        )
    return ckpt


def check_resumable(ckpt: Checkpoint, meta: dict, path: PathLike) -> None:
    """InputError naming the first setting in which ``ckpt`` differs from this run."""
    for key, what in MUST_MATCH.items():
        if ckpt.meta.get(key) != meta.get(key):
            hint = (
                " (the vectors differ from those it was made from)"
                if key == "data_fingerprint"
                else ""
            )
            raise InputError(
                f"checkpoint {path} was made with {what} {ckpt.meta.get(key)!r}, "
                f"this run has {meta.get(key)!r}{hint}; refusing to resume "
                "(remove the checkpoint or fix the arguments)"
            )
