"""The manifests' schemas (ondisk/schema.py): each kind round-trips to the very JSON the
writers have always written, documents of earlier format-2 writers still read, and a
document that does not fit its schema is refused naming the manifest file and the key.
Also the one input expander the merge and the search share (ondisk/paths.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from distributed_ondisk.errors import IndexFileError, InputError
from distributed_ondisk.ondisk import hslice, vslice
from distributed_ondisk.ondisk import manifest as mf
from distributed_ondisk.ondisk.paths import expand_inputs
from distributed_ondisk.ondisk.schema import (
    KINDS,
    CentroidsManifest,
    Counts,
    HsliceManifest,
    Part,
    Regions,
    TrainedLink,
    TrainedManifest,
    VsliceManifest,
)

FP = "574d255936c7a312ef133a2e6782a2c4b52c394eef9fa3bcbdf434d41b0a13c1"
TOOL = "distributed_ondisk 0.1.0, faiss 1.15.1"
COUNTS = {"n": 2, "total": 3, "zlib_b64_u64": Counts.of(np.array([1, 2])).zlib_b64_u64}


def entry(name: str) -> dict:
    return {"name": name, "size": 10, "xxh3_128": "24ba3e2fd22eb91b191bb2a99679816d"}


# Documents as format-2 writers wrote them (key for key; values shortened).
OLD_VSLICE = {  # make_vslice before vslices recorded their trained index
    "data": "/data/x.npy",
    "files": {"index": entry("vslice_0000_of_0002.index")},
    "format": 2,
    "id_range": [0, 3],
    "kind": "vslice",
    "list_sizes": COUNTS,
    "params": {"data_rows": 6, "keep_quantizer": False, "rows": [0, 3], "trained_fingerprint": FP},
    "quantizer": "placeholder",
    "regions": {
        "block_lists": 1,
        "block_xxh3_64": [12298804134229288386, 2480495089113062718],
        "header_digest": "aa" * 16,
        "trailer_digest": "bb" * 16,
    },
    "rows": 3,
    "structure": "26" * 32,
    "tool": TOOL,
    "trained_fingerprint": FP,
}
ADOPTED_VSLICE = {  # --adopt: no data file, kept quantizer, a trained link
    **copy.deepcopy(OLD_VSLICE),
    "adopted": True,
    "data": None,
    "quantizer": "kept",
    "trained_index": {"absolute": "/w/trained.index", "fingerprint": FP, "path": "../t.index"},
}
FIRST_HSLICE = {  # the first format-2 shards: no nlist, no trained link, no split
    "files": {"index": entry("h.index"), "invlists": entry("h.invlists")},
    "format": 2,
    "kind": "hslice",
    "list_range": [0, 2],
    "list_sizes": COUNTS,
    "params": {"inputs": [], "lists": [0, 2], "trained_fingerprint": FP},
    "quantizer": "kept",
    "rows": 3,
    "structure": "26" * 32,
    "tool": TOOL,
    "trained_fingerprint": FP,
}
HSLICE = {
    **copy.deepcopy(FIRST_HSLICE),
    "hslice": {"no": 0, "of": 2},
    "nlist": 4,
    "quantizer": "placeholder",
    "trained_index": {"absolute": "/w/trained.index", "fingerprint": FP, "path": "../t.index"},
}
TRAINED = {
    "code_size": 12,
    "d": 16,
    "data": "/data/x.npy",
    "data_rows": 6000,
    "description": "RR16,IVF32_HNSW32,SQ6",
    "files": {"index": entry("trained.index")},
    "fingerprint": FP,
    "format": 2,
    "kind": "trained_index",
    "nlist": 32,
    "params": {"centroids_digest": "cc" * 16, "opq_m": None, "sample": [0, 6000]},
    "structure": "26" * 32,
    "tool": TOOL,
}
CENTROIDS = {
    "d": 16,
    "files": {"centroids": entry("centroids.npy")},
    "format": 2,
    "k": 32,
    "kind": "centroids",
    "max_points_per_centroid": 256,
    "niter": 8,
    "objective": 12345.678,
    "seed": 1234,
    "tool": TOOL,
}
DOCS = [OLD_VSLICE, ADOPTED_VSLICE, FIRST_HSLICE, HSLICE, TRAINED, CENTROIDS]


def dumped(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"  # as write_manifest writes


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d["kind"] + str(len(d)))
def test_documents_of_every_writer_read_and_write_back_byte_identical(doc):
    m = KINDS[doc["kind"]].from_doc(copy.deepcopy(doc), "x.manifest.json")
    assert dumped(m.to_json()) == dumped(doc)
    assert type(m).from_doc(m.to_json(), "again") == m


def test_typed_fields():
    v = VsliceManifest.from_doc(copy.deepcopy(ADOPTED_VSLICE), "v")
    assert v.id_range == (0, 3) and v.adopted and v.data is None
    assert isinstance(v.regions, Regions) and v.regions.block_xxh3_64[0] == 12298804134229288386
    assert v.trained_index == TrainedLink(
        path="../t.index", absolute="/w/trained.index", fingerprint=FP
    )
    assert v.files["index"].digest == entry("x")["xxh3_128"]
    assert list(v.list_sizes.array("v")) == [1, 2]
    old = VsliceManifest.from_doc(copy.deepcopy(OLD_VSLICE), "v")
    assert old.trained_index is None and old.adopted is False
    h = HsliceManifest.from_doc(copy.deepcopy(FIRST_HSLICE), "h")
    assert h.nlist is None and h.hslice is None and h.trained_index is None
    assert HsliceManifest.from_doc(copy.deepcopy(HSLICE), "h").hslice == Part(no=0, of=2)
    assert TrainedManifest.from_doc(copy.deepcopy(TRAINED), "t").params["opq_m"] is None
    assert CentroidsManifest.from_doc(copy.deepcopy(CENTROIDS), "c").objective == 12345.678


def altered(doc: dict, path: str, value=None, *, delete: bool = False) -> dict:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    d = out
    for p in parents:
        d = d[p]
    if delete:
        del d[last]
    else:
        d[last] = value
    return out


@pytest.mark.parametrize(
    "doc, path, value, delete, match",
    [
        (OLD_VSLICE, "rows", None, True, "lacks key 'rows'"),
        (OLD_VSLICE, "regions.header_digest", None, True, "lacks key 'regions.header_digest'"),
        (OLD_VSLICE, "files.index.size", None, True, "lacks key 'files.index.size'"),
        (OLD_VSLICE, "tool", None, True, "lacks key 'tool'"),
        (OLD_VSLICE, "data", None, True, "lacks key 'data'"),  # null, but always written
        (OLD_VSLICE, "rows", "3", False, "key 'rows' is str '3', expected int"),
        (OLD_VSLICE, "rows", True, False, "key 'rows' is bool"),
        (OLD_VSLICE, "rows", 3.0, False, "key 'rows' is float"),
        (OLD_VSLICE, "id_range", [0, 1, 2], False, "key 'id_range' .*a list of 2"),
        (OLD_VSLICE, "id_range", [0, "1"], False, r"key 'id_range\[1\]'"),
        (OLD_VSLICE, "regions.block_lists", "1", False, "key 'regions.block_lists'"),
        (OLD_VSLICE, "regions.block_xxh3_64", 5, False, "key 'regions.block_xxh3_64'.*list"),
        (OLD_VSLICE, "list_sizes", [1, 2], False, "key 'list_sizes' is not an object"),
        (OLD_VSLICE, "quantizer", "lost", False, "key 'quantizer'.*'kept' or 'placeholder'"),
        (OLD_VSLICE, "params", [], False, "key 'params' .*an object"),
        (OLD_VSLICE, "surprise", 1, False, "unexpected manifest key 'surprise'"),
        (OLD_VSLICE, "regions.extra", 1, False, "unexpected manifest key 'regions.extra'"),
        (OLD_VSLICE, "id_range", [3, 1], False, r"invalid id range \[3, 1\)"),
        (OLD_VSLICE, "format", 1, False, "not a manifest of format 2"),
        (OLD_VSLICE, "kind", "hslice", False, "says it is a 'hslice', expected a 'vslice'"),
        (OLD_VSLICE, "schema", 2, False, "schema 2; this version reads schema 1"),
        (OLD_VSLICE, "files.invlists", entry("x"), False, "'files' has roles"),
        (HSLICE, "files.invlists", None, True, "'files' has roles"),
        (HSLICE, "hslice.of", 0, False, "invalid shard number"),
        (HSLICE, "list_range", [0, 5], False, r"invalid list range \[0, 5\) \(nlist 4\)"),
        (HSLICE, "nlist", "4", False, "key 'nlist' is str '4', expected int"),
        (HSLICE, "trained_index.path", None, True, "lacks key 'trained_index.path'"),
        (CENTROIDS, "objective", "nan", False, "key 'objective' is str 'nan', expected float"),
    ],
)
def test_a_document_off_its_schema_names_the_file_and_the_key(doc, path, value, delete, match):
    bad = altered(doc, path, value, delete=delete)
    cls = KINDS[doc["kind"]]
    with pytest.raises(IndexFileError, match="^/w/x.index.manifest.json: .*" + match):
        cls.from_doc(bad, "/w/x.index.manifest.json")


def test_an_integral_objective_is_a_float():
    c = CentroidsManifest.from_doc(altered(CENTROIDS, "objective", 12), "c")
    assert c.objective == 12.0 and isinstance(c.objective, float)


def test_written_manifests_read_back_typed_and_verify(tmp_path):
    data = tmp_path / "c.npy"
    np.save(data, np.zeros((4, 2), np.float32))
    m = CentroidsManifest(k=4, d=2, niter=1, seed=0, max_points_per_centroid=9, objective=0.5)
    done = mf.write_manifest(data, m, {"centroids": data})
    assert done.tool == mf.tool_version() and done.files["centroids"].size == data.stat().st_size
    assert done.files["centroids"].digest == mf.file_digest(data)
    assert mf.load_manifest(data, CentroidsManifest) == done
    assert mf.verify_manifest(data, CentroidsManifest) == done
    assert mf.verify_manifest(data, "centroids") == done.to_json()  # the document
    assert mf.manifest_path(data).read_text() == dumped(done.to_json())
    assert mf.manifest_kind(data) == "centroids"
    with pytest.raises(IndexFileError, match="expected a 'vslice'"):
        mf.load_manifest(data, VsliceManifest)
    data.write_bytes(b"rewritten")
    with pytest.raises(IndexFileError, match="c.npy: centroids file .* bytes, manifest says"):
        mf.verify_manifest(data, CentroidsManifest)


def test_readers_by_kind_name_check_the_schema_too(tmp_path):
    out = tmp_path / "h.index"
    mf.manifest_path(out).write_text(json.dumps(altered(HSLICE, "rows", "3")))
    for kind in (None, "hslice", HsliceManifest):
        with pytest.raises(IndexFileError, match="h.index.manifest.json: manifest key 'rows'"):
            mf.load_manifest(out, kind)
    assert mf.manifest_kind(out) == "hslice"  # a folder listing still sees what it claims
    mf.manifest_path(out).write_text("{not json")
    assert mf.manifest_kind(out) is None


def test_a_writer_cannot_publish_what_no_reader_accepts(tmp_path):
    data = tmp_path / "c.npy"
    data.write_bytes(b"x")
    m = CentroidsManifest(k=4, d=2, niter=1, seed=None, max_points_per_centroid=9, objective=0.5)
    with pytest.raises(RuntimeError, match="invalid manifest.*key 'seed'"):
        mf.write_manifest(data, m, {"centroids": data})
    assert not mf.manifest_path(data).exists()


def test_trained_link_paths(tmp_path):
    part = tmp_path / "shards" / "h.index"
    link = mf.trained_link(tmp_path / "t.index", FP, part)
    assert link.path == "../t.index" and link.absolute == str(tmp_path / "t.index")
    assert mf.linked_trained_paths(link, part) == [
        tmp_path / "shards" / "../t.index",
        tmp_path / "t.index",
    ]
    assert mf.linked_trained_paths(None, part) == []


def write_kind(path: Path, doc: dict) -> Path:
    path.write_bytes(b"")
    mf.manifest_path(path).write_text(json.dumps(doc))
    return path


def test_expand_inputs_for_vslices_and_shards(tmp_path):
    v = tmp_path / "v"
    v.mkdir()
    a, b = v / "a.index", v / "b.index"
    for p in (a, b, v / ".a.index.tmp-1", v / "notes.txt"):
        p.write_bytes(b"")
    assert expand_inputs([str(v)], vslice.INPUTS) == [a, b]
    assert expand_inputs([str(v / "*.index")], vslice.INPUTS) == [a, b]
    assert expand_inputs([b, str(a)], vslice.INPUTS) == [b, a]  # the order given
    with pytest.raises(InputError, match="vslice .*a.index is given twice"):
        expand_inputs([str(v), a], vslice.INPUTS)
    with pytest.raises(IndexFileError, match="nope.index: no such vslice file"):
        expand_inputs([tmp_path / "nope.index"], vslice.INPUTS)
    with pytest.raises(IndexFileError, match="nothing.*: pattern matches no file"):
        expand_inputs([str(tmp_path / "nothing*")], vslice.INPUTS)
    with pytest.raises(IndexFileError, match=r"directory holds no \*\.index slice"):
        expand_inputs([tmp_path], vslice.INPUTS)
    with pytest.raises(InputError, match="no input vslices given"):
        expand_inputs([], vslice.INPUTS)

    h = tmp_path / "h"
    h.mkdir()
    s0 = write_kind(h / "part0.idx", HSLICE)  # any name
    write_kind(h / "trained.index", TRAINED)  # other kinds lying there are not shards
    write_kind(h / "v.index", OLD_VSLICE)
    assert expand_inputs([h], hslice.INPUTS) == [s0]
    with pytest.raises(InputError, match="no such shard file or directory"):
        expand_inputs([h / "nope"], hslice.INPUTS)
    with pytest.raises(InputError, match="directory holds no shard"):
        expand_inputs([v], hslice.INPUTS)
    with pytest.raises(InputError, match="shard .*part0.idx is given twice"):
        expand_inputs([h, s0], hslice.INPUTS)
    with pytest.raises(InputError, match="no shard given"):
        expand_inputs([], hslice.INPUTS)
