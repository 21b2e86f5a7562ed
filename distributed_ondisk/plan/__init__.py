"""Cluster sizing: a calibrated cost model of every pipeline stage (`python -m distributed_ondisk plan`)."""
