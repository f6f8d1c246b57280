"""WebGPU backend on Chromium's software adapter (SwiftShader): a functional check on the tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eval.images import load_rgb, sample_photos

from common.chromium import WEBGPU_ARGS, launch

from .conftest import Harness, python_alpha



@pytest.fixture(scope="module")
def gpu_harness(playwright_instance, server):
    browser = launch(playwright_instance, WEBGPU_ARGS)
    context = browser.new_context(bypass_csp=True)
    h = Harness(context, context.new_page(), server.url)
    h.open()
    adapter = h.page.evaluate("""async () => {
      if (!navigator.gpu) return null;
      const a = await navigator.gpu.requestAdapter();
      return a && { architecture: a.info?.architecture, fallback: a.info?.isFallbackAdapter ?? false };
    }""")
    if adapter is None:
        browser.close()
        pytest.skip("this Chromium offers no WebGPU adapter even with --enable-unsafe-webgpu")
    h.adapter = adapter
    yield h
    browser.close()


def test_webgpu_cuts_like_python(gpu_harness, tiny_build):
    info = gpu_harness.load("tiny", variant="fp32", backend="webgpu")
    assert info["ok"], info
    assert info["backend"] == "webgpu"
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    photo = sample_photos()[0]
    rgb = load_rgb(photo)
    reference = python_alpha(tiny_build / manifest["variants"]["fp32"]["path"], manifest, rgb)
    mask = gpu_harness.cut(photo.read_bytes(), output="mask", format="raw")
    assert mask["ok"], mask
    diff = np.abs(mask["rgba"][..., 0].astype(np.float32) / 255 - reference)
    assert float(diff.mean()) <= 2 / 255, f"WebGPU mask differs by {diff.mean() * 255:.2f}/255"


def test_auto_avoids_software_adapter(gpu_harness):
    info = gpu_harness.load("tiny", variant="fp16", backend="auto")
    assert info["ok"], info
    if gpu_harness.adapter["fallback"]:
        assert info["backend"] == "wasm" and "software" in info["fallbackReason"], info
    assert gpu_harness.cut(sample_photos()[1].read_bytes())["ok"]


def test_fp16_variant_needs_shader_f16(gpu_harness, tiny_build):
    """The fp16 variant computes in fp16: on an adapter without `shader-f16` (SwiftShader) an explicit
    WebGPU request fails with a message naming the missing feature, not a shader compiler error."""
    manifest = json.loads((gpu_harness.page.evaluate("async () => JSON.stringify(await (await fetch('/tiny/manifest.json')).json())")))
    assert manifest["variants"]["fp16"]["webgpu_features"] == ["shader-f16"]
    assert manifest["variants"]["fp32"]["webgpu_features"] == []
    has_f16 = gpu_harness.page.evaluate("async () => (await navigator.gpu.requestAdapter()).features.has('shader-f16')")
    info = gpu_harness.load("tiny", variant="fp16", backend="webgpu")
    if has_f16:
        assert info["ok"] and info["backend"] == "webgpu", info
    else:
        assert not info["ok"] and info["code"] == "backend" and "shader-f16" in info["message"], info
