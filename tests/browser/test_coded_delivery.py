"""Coded variants in the browser: the bundle ships the `.ccw` weight container in verified chunks, the worker
decodes it into the exact bytes of the gated ONNX before the session (so the mask is the plain delivery's, bit
for bit), and a container that fails any check is refused with `integrity` and never cached."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil

import numpy as np
import pytest

from common.files import sri
from eval.images import sample_photos
from web_runtime.build_bundle import build_bundle

CHUNK_BYTES = 256 * 1024  # the tiny int8p3 container in several chunks
CACHED_URLS_JS = """async () => (await (await caches.open('clearcut-chunks-v1')).keys()).map((r) => r.url)"""


@pytest.fixture(scope="module")
def coded_bundles(web_root, coded_build) -> dict:
    """/coded/ (int8 plain, int8p3 coded), /coded-plain/ (int8p3 as its ONNX), /coded-flipped/ (a flipped byte in a
    container chunk), /coded-forged/ (the same, with the chunk's manifest entry rewritten to match: only the
    container's own sha256 catches it), /coded-other/ (the good chunks of /coded/, but the manifest records
    another decoded sha256). Returns the manifests."""
    build = coded_build[0]
    build_bundle(build, web_root / "coded", variants=["int8", "int8p3"], backends=("wasm",), chunk_bytes=CHUNK_BYTES)
    build_bundle(build, web_root / "coded-plain", variants=["int8p3"], backends=("wasm",), chunk_bytes=CHUNK_BYTES,
                 coded=False)
    manifest = json.loads((web_root / "coded" / "manifest.json").read_text())
    for name in ("coded-flipped", "coded-forged", "coded-other"):
        shutil.copytree(web_root / "coded", web_root / name)
        m = json.loads(json.dumps(manifest))
        chunk = m["variants"]["int8p3"]["chunks"][1]
        if name != "coded-other":
            data = bytearray((web_root / name / chunk["path"]).read_bytes())
            data[len(data) // 2] ^= 0x01
            if name == "coded-flipped":
                (web_root / name / chunk["path"]).write_bytes(bytes(data))
            else:
                digest = hashlib.sha256(data).hexdigest()
                chunk.update(path=f"chunks/{digest}.bin", sha256=digest, integrity=sri(bytes(data)))
                (web_root / name / chunk["path"]).write_bytes(bytes(data))
        else:
            m["variants"]["int8p3"]["sha256"] = hashlib.sha256(b"another graph").hexdigest()
            for c in m["variants"]["int8p3"]["chunks"]:
                c["path"] = f"../coded/{c['path']}"  # the very URLs /coded/ cached
        (web_root / name / "manifest.json").write_text(json.dumps(m))
    for path in web_root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"coded": manifest, "plain": json.loads((web_root / "coded-plain" / "manifest.json").read_text())}


def test_manifest_ships_the_container(coded_bundles, coded_build):
    build, data, _, _ = coded_build
    coded, plain = coded_bundles["coded"]["variants"], coded_bundles["plain"]["variants"]
    container = data["stages"]["variant:int8p3"]["result"]["container"]
    assert "coded" not in coded["int8"] and "coded" not in plain["int8p3"]
    assert coded["int8p3"]["coded"] == {"format": "ccw1", "bytes": container["bytes"], "sha256": container["sha256"]}
    assert coded["int8p3"]["sha256"] == plain["int8p3"]["sha256"] == data["variants"]["int8p3"]["sha256"]
    assert coded["int8p3"]["bytes"] == plain["int8p3"]["bytes"] == data["variants"]["int8p3"]["bytes"]
    assert sum(c["bytes"] for c in coded["int8p3"]["chunks"]) == container["bytes"] < coded["int8p3"]["bytes"]
    assert len(coded["int8p3"]["chunks"]) >= 2


def _mask(harness, bundle: str, photo: bytes) -> tuple[np.ndarray, list]:
    info = harness.load(bundle, variant="int8p3", warmup=False)
    assert info["ok"], info
    events = harness.page.evaluate("window.progressEvents")
    result = harness.cut(photo, output="mask", format="raw")
    assert result["ok"], result
    harness.page.evaluate("window.cutter.dispose()")
    return result["rgba"], events


def test_coded_variant_cuts_exactly_like_its_plain_delivery(harness, coded_bundles):
    photo = sample_photos()[0].read_bytes()
    coded, events = _mask(harness, "coded", photo)
    phases = [e["phase"] for e in events]
    decode = [e for e in events if e["phase"] == "decode"]
    assert decode and decode[-1]["loaded"] == decode[-1]["total"] > 0, events
    assert phases.index("decode") > max(i for i, p in enumerate(phases) if p == "download")
    assert phases.index("session") > phases.index("decode")
    container = coded_bundles["coded"]["variants"]["int8p3"]["coded"]["bytes"]
    assert [e for e in events if e["phase"] == "download"][-1]["total"] == container  # the container is what moves
    plain, events = _mask(harness, "coded-plain", photo)
    assert "decode" not in [e["phase"] for e in events]
    assert np.array_equal(coded, plain), "the coded delivery cut differently from the plain ONNX of the same variant"
    cached = harness.page.evaluate(CACHED_URLS_JS)
    for c in coded_bundles["coded"]["variants"]["int8p3"]["chunks"]:  # verified by the decode, then cached
        assert any(u.endswith(f"/coded/{c['path']}") for u in cached)


def test_coded_variant_reloads_from_the_cache(harness, coded_bundles):
    assert harness.load("coded", variant="int8p3", warmup=False)["ok"]
    harness.page.reload()
    mark = len(harness.network_requests())
    info = harness.load("coded", variant="int8p3", warmup=False)
    assert info["ok"], info
    assert not [r.url for r in harness.network_requests()[mark:] if "/chunks/" in r.url]
    events = harness.page.evaluate("window.progressEvents")
    assert any(e["phase"] == "decode" for e in events)
    assert harness.cut(sample_photos()[1].read_bytes())["ok"]


def _refused(harness, bundle: str) -> list[str]:
    result = harness.load(bundle, variant="int8p3", warmup=False)
    assert not result["ok"] and result["code"] == "integrity", result
    assert "not used or cached" in result["message"], result
    return [u for u in harness.page.evaluate(CACHED_URLS_JS) if f"/{bundle}/" in u]


def test_a_flipped_byte_in_a_coded_chunk_is_refused_and_nothing_cached(harness, coded_bundles):
    assert _refused(harness, "coded-flipped") == []  # the chunk's own sha256; the others wait for the decode
    assert _refused(harness, "coded-forged") == []  # chunks that match the manifest, a container that does not
    events = harness.page.evaluate("window.progressEvents")
    assert not [e for e in events if e["phase"] in ("decode", "session")]  # refused before decoding a weight


def test_cached_chunks_of_a_container_that_fails_are_evicted(harness, coded_bundles):
    assert harness.load("coded", variant="int8p3", warmup=False)["ok"]
    harness.page.evaluate("window.cutter.dispose()")
    urls = {harness.base_url + f"/coded/{c['path']}" for c in coded_bundles["coded"]["variants"]["int8p3"]["chunks"]}
    assert urls <= set(harness.page.evaluate(CACHED_URLS_JS))
    result = harness.load("coded-other", variant="int8p3", warmup=False)  # the same chunks, another decoded sha256 in the manifest
    assert not result["ok"] and result["code"] == "integrity", result
    assert not urls & set(harness.page.evaluate(CACHED_URLS_JS))


def test_harness_decodes_to_the_build_bytes(harness, coded_bundles, coded_build):
    """The worker's decode is ccw.js on the downloaded container: the same bytes as the build's ONNX."""
    build, data, _, _ = coded_build
    container = (build / data["stages"]["variant:int8p3"]["result"]["container"]["path"]).read_bytes()
    entry = coded_bundles["coded"]["variants"]["int8p3"]
    result = harness.page.evaluate("""async ([b64, expected]) => {
      const { decodeContainer } = await import('/coded/ccw.js');
      const out = await decodeContainer(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)), expected);
      const d = new Uint8Array(await crypto.subtle.digest('SHA-256', out));
      return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
    }""", [base64.b64encode(container).decode(), {"sha256": entry["sha256"], "bytes": entry["bytes"]}])
    assert result == hashlib.sha256((build / data["variants"]["int8p3"]["path"]).read_bytes()).hexdigest()
