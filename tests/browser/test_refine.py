"""Edge refinement: the browser's refine.js and the numpy twin eval/refine.py agree on real photos, the
bundle manifest carries the single set of constants, and a cut with `refine` uses them."""
from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from eval.images import alpha_to_image_size, load_rgb, sample_photos
from eval.refine import load_params, refine
from .conftest import REAL_BUILD, python_alpha

PHOTOS = [p for p in sample_photos() if p.name in ("astronaut.png", "chelsea.png")]

REFINE_JS = """async ([bundle, alphaB64, rgbaB64, width, height, overrides]) => {
  const { refineEdges } = await import(`/${bundle}/refine.js`);
  const manifest = await (await fetch(`/${bundle}/manifest.json`)).json();
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const alpha = new Float32Array(bytes(alphaB64).buffer);
  const rgba = new Uint8ClampedArray(bytes(rgbaB64).buffer);
  const started = performance.now();
  const info = refineEdges(alpha, rgba, width, height, { ...manifest.refine, ...overrides });
  const ms = performance.now() - started;
  const b64 = (u8) => { let s = ''; for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000)); return btoa(s); };
  return { info, ms, alpha: b64(new Uint8Array(alpha.buffer)), rgba: b64(new Uint8Array(rgba.buffer)) };
}"""

# A camera-sized photo made in the page (upscaled sample photo and mask), so that no 48 MB crosses CDP.
BIG_JS = """async ([bundle, pngB64, alphaB64, aw, ah, width, height]) => {
  const { refineEdges } = await import(`/${bundle}/refine.js`);
  const { resizeFloat } = await import(`/${bundle}/imaging.js`);
  const manifest = await (await fetch(`/${bundle}/manifest.json`)).json();
  const png = Uint8Array.from(atob(pngB64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([png]));
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const small = new Float32Array(Uint8Array.from(atob(alphaB64), (c) => c.charCodeAt(0)).buffer);
  const times = [];
  let info;
  for (let run = 0; run < 2; run++) {
    const alpha = resizeFloat(small, aw, ah, width, height);
    const copy = new Uint8ClampedArray(rgba);
    const started = performance.now();
    info = refineEdges(alpha, copy, width, height, manifest.refine);
    times.push(performance.now() - started);
  }
  return { info, times };
}"""


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _model_alpha(photo, tiny_build) -> np.ndarray:
    """The real model's fp32 output on the photo when the build has it, else the tiny model's."""
    rgb = load_rgb(photo)
    outputs = REAL_BUILD / "reference_outputs.npz"
    if outputs.exists():
        with np.load(outputs) as z:
            if photo.name in z:
                return alpha_to_image_size(z[photo.name][0, 0], rgb.shape[:2])
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    return python_alpha(tiny_build / manifest["variants"]["fp32"]["path"], manifest, rgb)


def _browser_refine(harness, alpha, rgb, overrides=None):
    height, width = alpha.shape
    rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    result = harness.page.evaluate(REFINE_JS, ["tiny", _b64(alpha.astype(np.float32)), _b64(rgba), width, height,
                                               overrides or {}])
    out_alpha = np.frombuffer(base64.b64decode(result["alpha"]), np.float32).reshape(height, width)
    out_rgb = np.frombuffer(base64.b64decode(result["rgba"]), np.uint8).reshape(height, width, 4)[..., :3]
    return out_alpha, out_rgb, result


def test_manifest_carries_the_refine_constants(web_root):
    manifest = json.loads((web_root / "tiny" / "manifest.json").read_text())
    assert manifest["refine"] == load_params()
    assert (web_root / "tiny" / "refine.js").exists()


@pytest.mark.parametrize("work_max_side", [None, 200])  # None: the shipped constants; 200: a 3x-reduced work image
@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_js_and_numpy_refinement_agree(harness, tiny_build, photo, work_max_side):
    rgb = load_rgb(photo)
    alpha = _model_alpha(photo, tiny_build).astype(np.float32)
    overrides = {"work_max_side": work_max_side} if work_max_side else {}
    js_alpha, js_rgb, result = _browser_refine(harness, alpha, rgb, overrides)
    params = dict(load_params(), **overrides)
    start = time.perf_counter()
    np_alpha, np_rgb = refine(alpha, rgb, params)
    np_ms = (time.perf_counter() - start) * 1000
    assert result["info"]["workScale"] == (3 if work_max_side else 1)
    assert result["info"]["bandPixels"] > 0 and result["info"]["decontaminated"] > 0
    changed = np.abs(np_alpha - alpha) > 1e-6
    assert changed.any(), "the refinement should change the mask somewhere"
    diff = np.abs(js_alpha.astype(np.float64) - np_alpha)
    assert diff.mean() <= 1 / 255 and diff.max() <= 4 / 255, (diff.mean(), diff.max())
    colour_diff = np.abs(js_rgb.astype(np.int16) - np_rgb.astype(np.int16))
    assert colour_diff.mean() <= 1.0 and colour_diff.max() <= 2, (colour_diff.mean(), colour_diff.max())  # 8-bit levels
    print(f"{photo.name} s={result['info']['workScale']}: alpha mean abs {diff.mean():.2e} max {diff.max():.2e}; "
          f"colours max {colour_diff.max()} ({(colour_diff > 0).mean():.2e} of values differ); "
          f"JS {result['ms']:.0f} ms, numpy {np_ms:.0f} ms")


def test_cut_with_refine_matches_numpy(harness, tiny_build):
    """End to end: `cut(..., {refine: true})` in the worker = numpy refinement of the Python reference."""
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    assert harness.load("tiny", variant="fp32")["ok"]
    photo = PHOTOS[0]
    rgb = load_rgb(photo)
    reference = python_alpha(tiny_build / manifest["variants"]["fp32"]["path"], manifest, rgb)
    expected_alpha, expected_rgb = refine(reference, rgb)
    cut = harness.cut(photo.read_bytes(), output="cutout", format="raw", refine=True)
    assert cut["ok"], cut
    alpha = cut["rgba"][..., 3].astype(np.float32) / 255
    assert float(np.abs(alpha - expected_alpha).mean()) <= 2 / 255
    colours = cut["rgba"][..., :3].astype(np.int16)
    assert float(np.abs(colours - expected_rgb).mean()) <= 1.0
    plain = harness.cut(photo.read_bytes(), output="cutout", format="raw", refine=False)
    assert plain["ok"] and np.array_equal(plain["rgba"][..., :3], rgb), "refine: false keeps the photo's colours"
    bad = harness.cut(photo.read_bytes(), refine="sometimes")
    assert not bad["ok"] and bad["code"] == "options"


@pytest.mark.slow
def test_refinement_time_on_a_12_megapixel_photo(harness, tiny_build):
    """Not a speed gate (the machine is shared): prints the browser and numpy times, same photo, same run."""
    photo = PHOTOS[0]
    rgb = load_rgb(photo)
    alpha = _model_alpha(photo, tiny_build).astype(np.float32)
    width, height = 4000, 3000
    result = harness.page.evaluate(BIG_JS, ["tiny", base64.b64encode(photo.read_bytes()).decode(), _b64(alpha),
                                            alpha.shape[1], alpha.shape[0], width, height])
    from PIL import Image

    big_rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    big_alpha = alpha_to_image_size(alpha, (height, width))
    start = time.perf_counter()
    refine(big_alpha, big_rgb)
    np_ms = (time.perf_counter() - start) * 1000
    js_ms = min(result["times"])
    print(f"12 MP refinement: browser {js_ms:.0f} ms (runs {[round(t) for t in result['times']]}), numpy {np_ms:.0f} ms, "
          f"work image {result['info']['workWidth']}x{result['info']['workHeight']}, band {result['info']['bandPixels']} px")
    assert result["info"]["workScale"] == 4
    assert js_ms < 30_000
