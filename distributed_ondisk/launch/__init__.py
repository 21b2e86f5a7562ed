"""Launching the pipeline (what run_on_cluster.bash runs): settings, the backends (local
processes, Slurm, Spark) behind one Task interface (backend.py), the stage graph
(pipeline.py) and its command lines (commands.py), data preparation, stage timings and
the final report, and the test Slurm cluster."""
