"""Memory stays flat over many cuts; the demo page (with its real CSP) shows the cutout."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from eval.images import load_rgb, sample_photos
from eval.refine import load_params, refine, want_refine

from .conftest import python_alpha

CUTS = 30


def test_memory_is_stable_over_30_cuts(harness):
    assert harness.load("tiny", variant="fp16")["ok"]
    photo = sample_photos()[0].read_bytes()
    cdp = harness.context.new_cdp_session(harness.page)
    samples = []
    for i in range(CUTS):
        result = harness.cut(photo, output="cutout", format="png")
        assert result["ok"], result
        cdp.send("HeapProfiler.collectGarbage")
        heap = cdp.send("Runtime.getHeapUsage")["usedSize"]
        wasm = harness.page.evaluate("window.cutter.memory()")
        samples.append((heap, wasm))
    heap3, wasm3 = samples[2]
    heap_max = max(s[0] for s in samples[2:])
    wasm_max = max(s[1] for s in samples[2:])
    assert wasm3 > 0, "the worker should report its wasm memory"
    assert wasm_max <= wasm3 * 1.10, f"wasm memory grew {wasm3} → {wasm_max}"
    assert heap_max <= heap3 * 1.10, f"page JS heap grew {heap3} → {heap_max}"


def test_demo_page_shows_the_cutout(browser, server, tiny_build, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})  # real CSP: no bypass
    page = context.new_page()
    errors, csp = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.url + "/tiny/index.html?variant=fp32")
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    assert "nothing is uploaded" in page.text_content("#privacy")
    page.check("input[name=bg][value='#ffffff']")
    photo = sample_photos()[0]
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert page.get_attribute("#download", "href").startswith("blob:")
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#after").screenshot())).convert("RGB"), np.float32)

    manifest = json.loads((tiny_build / "manifest.json").read_text())
    rgb = load_rgb(photo)
    alpha = python_alpha(tiny_build / manifest["variants"]["fp32"]["path"], manifest, rgb)
    colours = rgb
    if want_refine(None, load_params(), rgb.shape[1], rgb.shape[0], manifest["preprocessing"]["input_size"]):
        alpha, colours = refine(alpha, rgb)  # the page cuts with the bundle's default refinement
    alpha = alpha[..., None]
    expected = colours * alpha + 255 * (1 - alpha)  # the cutout on the white background chosen above
    assert shot.shape == expected.shape, f"screenshot {shot.shape} vs image {expected.shape}"
    assert float(np.abs(shot - expected).mean()) < 3.0, "the page does not show the expected cutout"
    assert float(np.abs(shot - rgb).mean()) > 5.0, "the page shows the original, not a cutout"
    assert errors == [] and csp == [], (errors, csp)
    context.close()
