"""The manifests' schemas: one frozen dataclass per kind, the only definition of its keys.

A manifest is a JSON object: the envelope (``format``, ``kind``, ``tool``, ``files``)
and the facts of its kind.  The dataclasses here are those documents key for key:
``to_json()`` gives exactly the object the writers have always written (so no
manifest's bytes changed when the schema became explicit), and ``from_doc()`` checks a
document read back: every key known, every required key present, every value of its
type, else IndexFileError naming the manifest file and the key.

Versions: ``FORMAT_VERSION`` is the container (the digest algorithm, see
:mod:`~distributed_ondisk.ondisk.manifest`); ``SCHEMA`` is each kind's layout of keys.
Schema 1 is the layout of every format-2 document, and has no ``schema`` key; a later
schema writes ``"schema": N``, so documents on disk stay readable by the version that
wrote them and a reader refuses a schema newer than its own instead of misreading it.
Keys that appeared after format 2 (a shard's ``nlist``, the ``trained_index`` link, the
``hslice`` split, ``adopted``) are optional: the documents written before them are valid.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from distributed_ondisk.errors import IndexFileError
from distributed_ondisk.ondisk.record import OPTIONAL, Record

if TYPE_CHECKING:  # annotations only (typing.Self is Python 3.11+)
    from typing_extensions import Self

FORMAT_VERSION = 2  # 2: XXH3-128 digests (1 had sha256)
DIGEST = "xxh3_128"  # the key of a file's digest (FileEntry.xxh3_128)


@dataclass(frozen=True, kw_only=True)
class FileEntry(Record):
    """One file of a manifest: its name relative to the manifest's folder, size, digest."""

    name: str
    size: int
    xxh3_128: str

    @property
    def digest(self) -> str:
        return self.xxh3_128


@dataclass(frozen=True, kw_only=True)
class Counts(Record):
    """Per-list counts, compact enough for millions of lists (zlib + base64 of uint64)."""

    n: int
    total: int
    zlib_b64_u64: str

    @classmethod
    def of(cls, counts: np.ndarray) -> Counts:
        arr = np.ascontiguousarray(counts, dtype="<u8")
        raw = base64.b64encode(zlib.compress(arr.tobytes(), 6)).decode("ascii")
        return cls(n=int(arr.size), total=int(arr.sum()), zlib_b64_u64=raw)

    def array(self, where: str) -> np.ndarray:
        """The counts (int64); ``where`` names the manifest in errors."""
        try:
            arr = np.frombuffer(zlib.decompress(base64.b64decode(self.zlib_b64_u64)), dtype="<u8")
        except (ValueError, zlib.error) as e:
            raise IndexFileError(f"{where}: malformed per-list counts in manifest: {e}") from e
        if arr.size != self.n or int(arr.sum()) != self.total:
            raise IndexFileError(
                f"{where}: per-list counts in manifest do not match their recorded size/total"
            )
        return arr.astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class TrainedLink(Record):
    """Where a part's trained index is: relative to the part's folder (followed first, so a
    tree moved as a whole still leads to it), absolute when written, and its fingerprint."""

    path: str
    absolute: str
    fingerprint: str


@dataclass(frozen=True, kw_only=True)
class Regions(Record):
    """A vslice's checksums the merge verifies as it streams (see ondisk.vslice)."""

    block_lists: int
    header_digest: str
    trailer_digest: str
    block_xxh3_64: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Part(Record):
    """Which shard of which split: ``no`` of ``of``."""

    no: int
    of: int

    def check(self, where: str) -> None:
        if not 0 <= self.no < self.of:
            raise IndexFileError(f"{where}: manifest has an invalid shard number {self.to_json()}")


@dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """The envelope; subclasses add their kind's facts.  ``tool`` and ``files`` are filled
    in by :func:`~distributed_ondisk.ondisk.manifest.write_manifest`."""

    KIND: ClassVar[str]
    SCHEMA: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("index",)  # the roles of its files
    tool: str = ""
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {"format": FORMAT_VERSION, "kind": self.KIND, **super().to_json()}
        if self.SCHEMA != 1:
            doc["schema"] = self.SCHEMA
        return doc

    @classmethod
    def from_doc(cls, doc: Any, where: str, prefix: str = "") -> Self:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
            raise IndexFileError(f"{where}: not a manifest of format {FORMAT_VERSION}")
        if doc.get("kind") != cls.KIND:
            raise IndexFileError(
                f"{where}: manifest says it is a {doc.get('kind')!r}, expected a {cls.KIND!r}"
            )
        schema = doc.get("schema", 1)
        if schema != cls.SCHEMA:
            raise IndexFileError(
                f"{where}: {cls.KIND} manifest of schema {schema!r}; this version reads "
                f"schema {cls.SCHEMA} (written by another version of the tool?)"
            )
        body = {k: v for k, v in doc.items() if k not in ("format", "kind", "schema")}
        m = cls._build(body, where, prefix)
        if sorted(m.files) != sorted(cls.FILES):
            raise IndexFileError(
                f"{where}: manifest key 'files' has roles {sorted(m.files)}, "
                f"expected {sorted(cls.FILES)}"
            )
        return m


@dataclass(frozen=True, kw_only=True)
class CentroidsManifest(Manifest):
    """k-means output (written by ``distributed_kmeans.py``)."""

    KIND: ClassVar[str] = "centroids"
    FILES: ClassVar[tuple[str, ...]] = ("centroids",)
    k: int
    d: int
    niter: int
    seed: int
    max_points_per_centroid: int
    objective: float


@dataclass(frozen=True, kw_only=True)
class TrainedManifest(Manifest):
    """The empty trained index; ``fingerprint`` is the sha256 of its file."""

    KIND: ClassVar[str] = "trained_index"
    params: dict[str, Any]
    fingerprint: str
    structure: str
    description: str
    d: int
    nlist: int
    data: str
    data_rows: int
    code_size: int


@dataclass(frozen=True, kw_only=True)
class VsliceManifest(Manifest):
    """A vertical slice: rows ``id_range`` of the data in a copy of the trained index."""

    KIND: ClassVar[str] = "vslice"
    params: dict[str, Any]
    regions: Regions
    trained_fingerprint: str
    structure: str
    rows: int
    id_range: tuple[int, int]
    list_sizes: Counts
    quantizer: Literal["kept", "placeholder"]
    data: str | None  # the data file, None for adopted slices
    trained_index: TrainedLink | None = field(default=None, metadata=OPTIONAL)
    adopted: bool = field(default=False, metadata=OPTIONAL)

    def check(self, where: str) -> None:
        i0, i1 = self.id_range
        if not 0 <= i0 <= i1:
            raise IndexFileError(f"{where}: invalid id range [{i0}, {i1})")


@dataclass(frozen=True, kw_only=True)
class HsliceManifest(Manifest):
    """A horizontal shard: lists ``list_range`` of every vslice, data in ``invlists``."""

    KIND: ClassVar[str] = "hslice"
    FILES: ClassVar[tuple[str, ...]] = ("index", "invlists")
    params: dict[str, Any]
    trained_fingerprint: str
    structure: str
    list_range: tuple[int, int]
    list_sizes: Counts
    rows: int
    quantizer: Literal["kept", "placeholder"]  # "kept": shards merged before format 2's end
    nlist: int | None = field(
        default=None, metadata=OPTIONAL
    )  # absent from the first format-2 shards
    trained_index: TrainedLink | None = field(default=None, metadata=OPTIONAL)
    hslice: Part | None = field(
        default=None, metadata=OPTIONAL
    )  # the split, when the merge was given one

    def check(self, where: str) -> None:
        l0, l1 = self.list_range
        if not 0 <= l0 <= l1 or (self.nlist is not None and l1 > self.nlist):
            raise IndexFileError(f"{where}: invalid list range [{l0}, {l1}) (nlist {self.nlist})")


KINDS: dict[str, type[Manifest]] = {
    c.KIND: c for c in (CentroidsManifest, TrainedManifest, VsliceManifest, HsliceManifest)
}
