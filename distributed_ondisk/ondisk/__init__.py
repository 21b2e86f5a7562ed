"""The on-disk format: every file the toolkit writes and reads (trained index, vslices,
hslices, manifests).  Stages and search depend on this package, never on each other."""
