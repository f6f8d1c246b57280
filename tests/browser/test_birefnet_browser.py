"""The tiny BiRefNet configuration (Swin attention, GridSample deformable convs) cut in headless Chromium on
WASM: mask and cutout match Python onnxruntime on the same ONNX file, as for U^2-NetP in test_parity."""
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
    """build/birefnet-tiny/ exported at 64 px and its bundle, served by nginx at /birefnet/."""
    config, weights = birefnet_tiny
    root = tmp_path_factory.mktemp("birefnet_browser")
    run_export(ExportOptions(model=config.name, variants=VARIANTS, weights=weights, input_size=(SIZE, SIZE),
                             out_dir=root / "build", parity_images=PHOTOS, latency_runs=1, log=lambda _: None))
    build = root / "build" / config.name
    www = root / "www"
    build_bundle(build, www / "birefnet", backends=("wasm",), chunk_bytes=TINY_CHUNK_BYTES)
    (www / "harness.html").write_text("<!doctype html><meta charset=utf-8><title>harness</title><body></body>")
    (www / "favicon.ico").write_bytes(b"")
    for path in www.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    www.chmod(0o755)
    with NginxServer(www) as server:
        yield server, build


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_birefnet_parity_in_chromium(browser, birefnet_site, variant):
    server, build = birefnet_site
    manifest = json.loads((build / "manifest.json").read_text())
    context = browser.new_context(bypass_csp=True)
    try:
        harness = Harness(context, context.new_page(), server.url)
        harness.open()
        info = harness.load("birefnet", variant=variant)
        assert info["ok"], info
        assert info["backend"] == "wasm"
        for photo in PHOTOS:
            _check(harness, build / manifest["variants"][variant]["path"], manifest, photo)
    finally:
        context.close()
