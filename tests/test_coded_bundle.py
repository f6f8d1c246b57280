"""A coded variant in the bundle, Python side: `make bundle` ships its `.ccw` container as verified chunks,
`clearcut cut --bundle` decodes it (quantize.ccw, torch-free) into the gated graph's bytes and refuses a corrupt
one, and `make publish` carries the container chunks like any other (the browser side: tests/browser)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from common.files import sri
from common.manifest_schema import parse_bundle_manifest
from eval.cut import ModelError, _join_chunks, load_bundle
from eval.images import sample_photos
from export.cli import main as clearcut
from web_runtime.build_bundle import BundleError, build_bundle
from web_runtime.publish import content_type, publish


@pytest.fixture(scope="module")
def coded_dist(coded_build, tmp_path_factory):
    build = coded_build[0]
    dist = tmp_path_factory.mktemp("coded-dist") / "dist"
    build_bundle(build, dist, variants=["int8", "int8p3"], backends=("wasm",), chunk_bytes=256 * 1024)
    return build, dist


def test_bundle_joins_and_decodes_to_the_gated_graph(coded_dist, coded_build):
    build, dist = coded_dist
    data = coded_build[1]
    manifest = parse_bundle_manifest((dist / "manifest.json").read_text())
    entry = manifest.variants["int8p3"]
    assert entry.coded and entry.coded.format == "ccw1" and manifest.variants["int8"].coded is None
    onnx_bytes = (build / data["variants"]["int8p3"]["path"]).read_bytes()
    assert _join_chunks(dist, entry, "int8p3") == onnx_bytes
    assert entry.sha256 == hashlib.sha256(onnx_bytes).hexdigest()


def test_cli_cuts_the_coded_bundle_like_the_build(coded_dist, tmp_path):
    build, dist = coded_dist
    photo = str(sample_photos()[0])
    masks = []
    for source, folder in (("--build", build), ("--bundle", dist)):
        out = tmp_path / source.strip("-")
        assert clearcut(["cut", photo, "-o", str(out), source, str(folder), "--variant", "int8p3", "--output", "mask"]) == 0
        masks.append(np.asarray(Image.open(next(out.iterdir()))))
    assert np.array_equal(*masks)


def test_a_corrupt_container_is_refused(coded_dist, tmp_path):
    _, dist = coded_dist
    forged = tmp_path / "forged"
    shutil.copytree(dist, forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    chunk = manifest["variants"]["int8p3"]["chunks"][1]
    data = bytearray((forged / chunk["path"]).read_bytes())
    data[len(data) // 2] ^= 1
    digest = hashlib.sha256(data).hexdigest()
    chunk.update(path=f"chunks/{digest}.bin", sha256=digest, integrity=sri(bytes(data)))
    (forged / chunk["path"]).write_bytes(bytes(data))
    variant = manifest["variants"]["int8p3"]
    joined = b"".join((forged / c["path"]).read_bytes() for c in variant["chunks"])
    variant["coded"].update(sha256=hashlib.sha256(joined).hexdigest())  # every sha256 but the container's own
    (forged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="container is corrupt"):
        load_bundle(forged, "int8p3")
    variant["coded"].update(sha256="0" * 64)
    (forged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not the weight container the manifest lists"):
        load_bundle(forged, "int8p3")


def test_bundle_refuses_a_container_that_is_not_the_variant(coded_build, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(coded_build[0], build)
    manifest = json.loads((build / "manifest.json").read_text())
    # int8p2's containers as int8p3's: the WASM graph's alone, and the one that also carries the WebGPU graph
    for record in (lambda v: manifest["stages"][f"variant:{v}"]["result"]["container"],
                   lambda v: manifest["variants"][v]["engines_container"]):
        container, other = record("int8p3"), record("int8p2")
        shutil.copyfile(build / other["path"], build / container["path"])
        container["sha256"] = other["sha256"]
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="decodes to .* not variant int8p3's"):
        build_bundle(build, tmp_path / "dist", variants=["int8p3"], backends=("wasm",))


def test_publish_carries_the_container_chunks(coded_dist, tmp_path):
    _, dist = coded_dist
    report = publish(dist, str(tmp_path / "site"), log=lambda line: None)
    assert report.problems == []
    manifest = json.loads((dist / "manifest.json").read_text())
    site = tmp_path / "site" / report.version
    for chunk in manifest["variants"]["int8p3"]["chunks"]:
        assert (site / chunk["path"]).read_bytes() == (dist / chunk["path"]).read_bytes()
        assert content_type(chunk["path"]) == "application/octet-stream"
