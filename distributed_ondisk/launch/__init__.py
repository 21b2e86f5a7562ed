"""Launching the pipeline: data preparation, stage timings and the final report
(used by run_on_cluster.bash locally and on Slurm), and the test Slurm cluster."""
