"""Stages 2-4: trained index, vertical slices, merge into horizontal shards (with their
pure planning beside the doing).  They read and write files through
:mod:`distributed_ondisk.ondisk` only."""
