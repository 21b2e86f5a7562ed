#!/usr/bin/env bash
# run_on_cluster.bash TARGET: run the distributed_ondisk pipeline locally or on Slurm.
#
#   bash run_on_cluster.bash            # list the targets
#   bash run_on_cluster.bash demo       # the whole pipeline on bundled GloVe data
#   DATA=x.bvecs WORKDIR=w bash run_on_cluster.bash local_pipeline
#
# Every target is idempotent: finished outputs (checked by their manifests) are
# skipped, so rerunning after a failure resumes where it stopped.
#
# Settings (environment variables; an unset or empty one takes its default, listed
# with its meaning by `python -m distributed_ondisk pipeline --help`, where each is
# also a flag --k, --niter ...):
#   PYTHON DATA QUERIES NQ HOLDOUT SHUFFLE WORKDIR K NITER SEED MAX_POINTS_PER_CENTROID
#   KMEANS_SERVERS TRAIN_ROWS ENCODER EF_SEARCH NVSLICES NHSLICES SEARCH_SERVERS NPROBE
#   NCORES TRAIN_NT GPU SECRET_FILE WAIT_TIMEOUT
#   Slurm: SLURM_PARTITION SLURM_TIME SLURM_GPUS_PER_NODE KMEANS_NODES SERVERS_PER_NODE
#          CPUS_PER_TASK MAX_PARALLEL_TASKS (and VSLICES_JOB for make_index_hslices)
#
# This file only finds the package and the interpreter: the targets, the stage
# graph and the Slurm job scripts are distributed_ondisk/launch/ (cli.py).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${PYTHON:=python3}"
export PYTHON PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m distributed_ondisk.launch.cli "$@"
