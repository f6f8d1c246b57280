"""The tiny BiRefNet configuration (Swin attention, GridSample deformable convs) cut in headless Chromium on
WASM: mask and cutout match Python onnxruntime on the same ONNX files, as for U^2-NetP in test_parity.

BiRefNet ships as browser stages (backbone, decoder: two graphs run one after another, each session released
before the next is created), the form in which the full-size model fits the 4 GB WASM heap; the reference is
the same stage graphs composed in Python. The one-graph form of the same build is checked too."""
from __future__ import annotations

import json

import pytest

from export.pipeline import ExportOptions, run_export
from web_runtime.build_bundle import build_bundle
from web_runtime.serve import NginxServer
from .conftest import TINY_CHUNK_BYTES, Harness
from .test_parity import PHOTOS, _check

SIZE = 64
VARIANTS = ["fp32", "fp16", "int8w"]


@pytest.fixture(scope="module")
def birefnet_site(tmp_path_factory, birefnet_tiny):
    """build/birefnet-tiny/ exported at 64 px (with browser stages) and two bundles served by nginx: /birefnet/
    (stages) and /birefnet-single/ (one graph, fp32)."""
    config, weights = birefnet_tiny
    root = tmp_path_factory.mktemp("birefnet_browser")
    run_export(ExportOptions(config=config, variants=VARIANTS, weights=weights, input_size=(SIZE, SIZE),
                             out_dir=root / "build", parity_images=PHOTOS, latency_runs=1, log=lambda _: None))
    build = root / "build" / config.name
    www = root / "www"
    build_bundle(build, www / "birefnet", backends=("wasm",), chunk_bytes=TINY_CHUNK_BYTES)
    build_bundle(build, www / "birefnet-single", variants=["fp32"], backends=("wasm",),
                 chunk_bytes=TINY_CHUNK_BYTES, stages=False)
    (www / "harness.html").write_text("<!doctype html><meta charset=utf-8><title>harness</title><body></body>")
    (www / "favicon.ico").write_bytes(b"")
    for path in www.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    www.chmod(0o755)
    with NginxServer(www) as server:
        yield server, build, www


def _harness(browser, server):
    context = browser.new_context(bypass_csp=True)
    harness = Harness(context, context.new_page(), server.url)
    harness.open()
    return context, harness


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_birefnet_stages_in_chromium(browser, birefnet_site, variant):
    server, build, www = birefnet_site
    manifest = json.loads((build / "manifest.json").read_text())
    stages = manifest["variants"][variant]["stages"]
    assert [s["name"] for s in stages] == ["backbone", "decoder"]
    bundled = json.loads((www / "birefnet" / "manifest.json").read_text())["variants"][variant]
    assert "chunks" not in bundled and [s["name"] for s in bundled["stages"]] == ["backbone", "decoder"]
    assert bundled["stages"][1]["inputs"] == ["input", "x1", "x2", "x3", "x4"]
    context, harness = _harness(browser, server)
    try:
        info = harness.load("birefnet", variant=variant)
        assert info["ok"], info
        assert info["backend"] == "wasm" and info["stages"] == ["backbone", "decoder"]
        for photo in PHOTOS:
            _check(harness, [build / s["path"] for s in stages], manifest, photo)
        timing = harness.page.evaluate("""async () => {
            const timing = {};
            // a failed cut (not an image) leaves the staged runner ready for the next one
            await window.cutter.cut(await (await fetch('/birefnet/manifest.json')).blob()).catch(() => {});
            const img = new ImageData(32, 32);
            await window.cutter.cut(img, { output: 'mask', format: 'raw', timing });
            return timing; }""")
        assert [s["name"] for s in timing["stages"]] == ["backbone", "decoder"]
        assert all(s["runMs"] > 0 and s["sessionMs"] >= 0 for s in timing["stages"])
        stages_seen = harness.page.evaluate("window.progressEvents.filter((p) => p.phase === 'stage').map((p) => p.stage)")
        assert stages_seen[-3:] == ["backbone", "decoder", None]  # per-stage progress of a cut
    finally:
        context.close()


def test_tiny_birefnet_single_graph_in_chromium(browser, birefnet_site):
    server, build, _ = birefnet_site
    manifest = json.loads((build / "manifest.json").read_text())
    context, harness = _harness(browser, server)
    try:
        info = harness.load("birefnet-single", variant="fp32")
        assert info["ok"], info
        assert info["stages"] is None
        for photo in PHOTOS:
            _check(harness, build / manifest["variants"]["fp32"]["path"], manifest, photo)
    finally:
        context.close()
