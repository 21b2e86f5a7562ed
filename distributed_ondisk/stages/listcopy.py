"""Streaming copy of inverted lists ``[l0, l1)`` from vertical slices into one shard data file.

Per list, the output holds the codes of every slice (in slice order), then their
ids: the ``OnDiskInvertedLists`` layout.  The copy runs in bounded batches of
consecutive lists:

* a reader thread ``pread``s each slice's bytes for batch ``k + 1`` (``threads``
  of them split the slices, for file systems where a read waits on the network)
  into one of two reused buffers, and checks them against the slice manifest's
  block digests
  (:class:`~distributed_ondisk.ondisk.vslice.BlockVerifier`: the bytes checked
  are the very bytes written, and no slice byte is read twice);
* the main thread gathers batch ``k`` into output order with one Arrow ``take``
  over its buffer cut into (slice, list, codes|ids) parts
  (:func:`~distributed_ondisk.stages.plan.gather_plan`);
* a writer thread ``pwrite``s batch ``k - 1``, hashes it and starts its writeback.

Why Arrow: a shard has two parts per (list, slice), ~30 vectors each at the
benchmark's scale and fewer at a billion vectors, and a Python loop over them
(a memoryview per part, ``bytes.join``) cost 0.5 us a part, most of the merge.
``take`` on a ``large_binary`` array whose data buffer *is* the read buffer
does the same gather in C++ without the GIL (640 MB: 0.11 s, reads included,
vs 0.39 s).  Fresh memory is expensive here (2.5 us per page fault), so every
buffer is reused.

Memory is about ten batches (two read buffers of ``READ_BATCHES`` batches each,
the piece being gathered, the piece being written), whatever the shard size.

The output is preallocated (``posix_fallocate``: a full disk fails before the
long work), written under a temporary name, fsynced once and renamed by
:func:`distributed_ondisk.atomic.atomic_path`; writeback is started per batch
so the final fsync waits for little.  Nothing is published unless every copied
byte, and every byte of the partly covered edge blocks, matched its digest.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distributed_ondisk.atomic import atomic_path
from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.log import Progress
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.indexfile import IDX_BYTES
from distributed_ondisk.ondisk.vslice import BlockVerifier
from distributed_ondisk.stages.plan import gather_plan, plan_merge_reads

log = logging.getLogger(__name__)
_EDGE_READ = 8 << 20
# Slices are read READ_BATCHES output batches at a time: with many slices each one's
# share of a batch is small, and a read costs a system call (and, on network file
# systems, a round trip) whatever its size.  The gathered pieces stay at the batch
# size: larger ones are fresh allocations, and a fresh page costs a fault each.
READ_BATCHES = 4
WRITES_IN_FLIGHT = 2
# Batches held at most: two read buffers of READ_BATCHES, the pieces being written and
# the one being gathered (the cost model's merge RAM is computed from this).
MEMORY_BATCHES = 2 * READ_BATCHES + WRITES_IN_FLIGHT + 1


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], offset + got)
        if k == 0:
            raise IndexFileError(f"{path}: file ends early at byte {offset + got}")
        got += k


class _SliceReader:
    """Reads one slice's list bytes in order, verifying every list block it covers,
    including the parts of the edge blocks outside ``[l0, l1)``."""

    def __init__(self, s: Any, l0: int, l1: int) -> None:
        self.path = s.path
        self.sizes = s.layout.sizes
        self.offsets = s.layout.offsets
        self.verifier = BlockVerifier(s.layout, s.manifest.regions)
        self.pos = self.verifier.start_of_block(int(self.offsets[l0]))
        self.tail_end = self.verifier.end_of_block(int(self.offsets[l1]))
        self.fd = os.open(s.path, os.O_RDONLY)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._skip_to(int(self.offsets[l0]))

    def read_into(self, view: memoryview) -> None:
        """The next ``len(view)`` bytes, verified, into ``view``."""
        _pread_into(self.fd, view, self.pos, self.path)
        self.verifier.feed(view, self.pos)
        self.pos += len(view)

    def _skip_to(self, end: int) -> None:
        """Read and verify up to ``end`` without copying (edge blocks)."""
        scratch = bytearray(min(_EDGE_READ, max(0, end - self.pos)))
        while self.pos < end:
            self.read_into(memoryview(scratch)[: min(len(scratch), end - self.pos)])

    def finish(self) -> None:
        """Read and verify the rest of the last block (its lists are not copied)."""
        self._skip_to(self.tail_end)

    def close(self) -> None:
        os.close(self.fd)


class _Gatherer:
    """Reads batches of lists from every slice into two reused buffers (batch ``k + 1``
    is read while batch ``k`` is gathered) and gathers each into output order."""

    def __init__(self, readers: Sequence[_SliceReader], code_size: int, threads: int = 1) -> None:
        self.readers = readers
        self.code_size = code_size
        # reads the slices of a batch concurrently (pays where a read waits on the network)
        self.threads = max(1, min(threads, len(readers)))
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.bufs = [np.empty(0, dtype=np.uint8), np.empty(0, dtype=np.uint8)]
        self.sizes = np.stack([r.sizes for r in readers]).astype(np.int64)  # (S, nlist)

    def read(self, la: int, lb: int, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read lists [la, lb) of every slice into buffer ``slot``; returns what
        :func:`_gather` needs."""
        offsets, order = gather_plan(self.sizes[:, la:lb], self.code_size)
        total = int(offsets[-1])
        if len(self.bufs[slot]) < total:  # grows rarely: fresh pages cost a fault each
            self.bufs[slot] = np.empty(max(total, len(self.bufs[slot]) * 5 // 4), np.uint8)
        buf = self.bufs[slot]
        view = memoryview(buf)
        nparts = 2 * (lb - la)
        parts = [
            view[offsets[s * nparts] : offsets[(s + 1) * nparts]] for s in range(len(self.readers))
        ]
        nt = self.threads
        if self.pool is None:
            _read_all(self.readers, parts)
        else:  # one task per thread, each a fixed share of the slices: their verifiers
            list(
                self.pool.map(
                    _read_all,  # see each slice's bytes in order
                    [self.readers[i::nt] for i in range(nt)],
                    [parts[i::nt] for i in range(nt)],
                )
            )
        return buf, offsets, order

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _read_all(readers: Sequence[_SliceReader], views: Sequence[memoryview]) -> None:
    for r, v in zip(readers, views):
        r.read_into(v)


def _gather(
    buf: np.ndarray, offsets: np.ndarray, order: np.ndarray, pieces: Sequence[tuple[int, int, int]]
) -> Iterator[pa.Buffer]:
    """Parts ``buf[offsets[i]:offsets[i + 1]]`` concatenated in ``order``, cut into
    ``pieces`` ``(first, end, nbytes)`` of ``order``: one Arrow take each (C++, no
    GIL) over the parts array built once."""
    total = int(offsets[-1])
    parts = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(offsets) - 1,
        [None, pa.py_buffer(offsets), pa.py_buffer(buf[:total])],
    )
    for first, end, nbytes in pieces:
        if nbytes == 0:
            continue
        data = pc.take(parts, pa.array(order[first:end])).buffers()[2]
        if data is None or data.size < nbytes:
            raise RuntimeError(  # the gather plan and its buffer disagree: a bug
                f"gathered {0 if data is None else data.size} bytes, expected {nbytes}"
            )
        yield data.slice(0, nbytes)


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _write_batch(fd: int, data: Any, offset: int, digest: Any) -> None:
    """pwrite one gathered batch, hash it (batches come in file order: one writer),
    then start its writeback (POSIX_FADV_DONTNEED writes dirty pages back on Linux)
    so that the final fsync has little left to wait for."""
    _pwrite_all(fd, data, offset)
    digest.update(data)  # XXH3 releases the GIL: the main thread gathers meanwhile
    os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)


def write_lists(
    slices: Sequence[Any], l0: int, l1: int, dest: Path, threads: int, batch_bytes: int
) -> tuple[np.ndarray, str]:
    """Write the shard data file for lists [l0, l1) of ``slices`` (checked ``Vslice``
    objects, in id order); returns (merged list sizes, digest of the file).

    ``threads`` > 1 reads the slices of each batch with that many threads (worth it
    where one read waits on the network); the gather and the write use one each."""
    cs = slices[0].layout.code_size
    sizes = np.sum([s.layout.sizes[l0:l1] for s in slices], axis=0).astype(np.int64)
    batches = [
        (l0 + a, l0 + b, pieces)
        for a, b, pieces in plan_merge_reads(sizes, len(slices), cs, batch_bytes, READ_BATCHES)
    ]
    total = int(sizes.sum()) * (cs + IDX_BYTES)
    readers: list[_SliceReader] = []
    gatherer: _Gatherer | None = None
    try:
        for s in slices:
            readers.append(_SliceReader(s, l0, l1))
        gatherer = _Gatherer(readers, cs, threads)
        with atomic_path(dest) as tmp:
            digest = _copy(gatherer, batches, tmp, total, f"merge lists [{l0}, {l1})")
    finally:
        if gatherer is not None:
            gatherer.close()
        for r in readers:
            r.close()
    return sizes, digest


def _copy(
    gatherer: _Gatherer,
    batches: list[tuple[int, int, list[tuple[int, int, int]]]],
    tmp: Path,
    total: int,
    what: str,
) -> str:
    """Copy all batches into ``tmp`` (fsynced); returns the file's digest."""
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
    h = mf.new_digest()
    try:
        if total:
            try:  # reserve the space: a full disk fails now, not after the long work
                os.posix_fallocate(fd, 0, total)
            except OSError as e:
                raise IndexFileError(f"{tmp}: cannot reserve {total} bytes: {e.strerror}") from e
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, Progress(
            total, what, "B", logger=log
        ) as prog:
            reading = reader.submit(gatherer.read, *batches[0][:2], 0) if batches else None
            writing: collections.deque[Future] = collections.deque()
            pos = 0
            for k in range(len(batches)):
                read = reading.result()
                # the other buffer fills with batch k + 1 while batch k is gathered
                reading = (
                    reader.submit(gatherer.read, *batches[k + 1][:2], (k + 1) % 2)
                    if k + 1 < len(batches)
                    else None
                )
                for data in _gather(*read, batches[k][2]):
                    if len(writing) == WRITES_IN_FLIGHT:
                        writing.popleft().result()  # bounded memory; a slow disk moment
                    writing.append(writer.submit(_write_batch, fd, data, pos, h))  # is absorbed
                    pos += data.size
                    prog.update(data.size)
                    del data
                del read
            while writing:
                writing.popleft().result()
            for r in gatherer.readers:
                r.finish()
        if pos != total:
            raise RuntimeError(f"wrote {pos} bytes of lists, expected {total}")  # a bug
        os.fsync(fd)
        return h.hexdigest()
    finally:
        os.close(fd)
