"""The runtime in three browser engines from Debian's packages, on the same bundle (the tiny model) and page:
Chromium (Playwright), Firefox ESR (puppeteer-core over WebDriver BiDi, no geckodriver) and WebKitGTK, Safari's
engine (Selenium's WebKitGTK driver under xvfb-run). One scenario (tests/browser/matrix/scenario.js): load,
mask, the three output formats, bad inputs, a batch with a bad item. Every engine must give Chromium's mask bit
for bit (WASM arithmetic does not depend on the browser), the formats asked for or a clear error, and the same
error codes."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.images import load_rgb, sample_photos

from .conftest import python_alpha

HERE = Path(__file__).resolve().parent
FIREFOX = Path("/usr/bin/firefox-esr")
WEBKIT_DRIVER = Path("/usr/bin/WebKitWebDriver")
MINIBROWSER = Path("/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser")
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def matrix_url(web_root, server) -> str:
    shutil.copytree(HERE / "matrix", web_root / "matrix", dirs_exist_ok=True)
    for path in (web_root / "matrix").rglob("*"):
        path.chmod(0o644)
    (web_root / "matrix").chmod(0o755)
    return f"{server.url}/matrix/matrix.html?bundle=tiny&variant=fp32"


def _chromium(url: str, playwright_instance) -> dict:
    from common.chromium import launch
    browser = launch(playwright_instance)
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => typeof window.matrixResult === 'string'", timeout=TIMEOUT_S * 1000)
        return json.loads(page.evaluate("window.matrixResult"))
    finally:
        browser.close()


def _firefox(url: str) -> dict:
    if not FIREFOX.exists():
        pytest.skip(f"{FIREFOX} is not installed (run `make setup-system`)")
    done = subprocess.run(["node", str(HERE / "matrix" / "firefox_driver.mjs"), url, str(TIMEOUT_S * 1000)],
                          capture_output=True, text=True, timeout=TIMEOUT_S + 60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


WEBKIT_SCRIPT = """
import json, sys
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait
from selenium.webdriver.webkitgtk.options import Options
from selenium.webdriver.webkitgtk.service import Service
options = Options()
options.binary_location = sys.argv[2]
options.add_argument("--automation")
driver = webdriver.WebKitGTK(options=options, service=Service(executable_path=sys.argv[3]))
try:
    driver.get(sys.argv[1])
    result = WebDriverWait(driver, float(sys.argv[4]), poll_frequency=0.25).until(
        lambda d: d.execute_script("return window.matrixResult || null"))
    sys.stdout.write(result)
finally:
    driver.quit()
"""


def _webkit(url: str) -> dict:
    if not (WEBKIT_DRIVER.exists() and MINIBROWSER.exists() and shutil.which("xvfb-run")):
        pytest.skip("WebKitGTK's driver, MiniBrowser or xvfb-run is not installed (run `make setup-system`)")
    done = subprocess.run(["xvfb-run", "-a", sys.executable, "-c", WEBKIT_SCRIPT, url, str(MINIBROWSER),
                           str(WEBKIT_DRIVER), str(TIMEOUT_S)], capture_output=True, text=True, timeout=TIMEOUT_S + 60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def chromium_result(matrix_url, playwright_instance) -> dict:
    return _chromium(matrix_url, playwright_instance)


def _alpha(result: dict) -> np.ndarray:
    mask = result["mask"]
    assert mask["ok"], mask
    return np.frombuffer(base64.b64decode(mask["alpha"]), np.uint8).reshape(mask["height"], mask["width"])


@pytest.mark.parametrize("engine", ["chromium", "firefox", "webkit"])
def test_the_runtime_in_each_engine(engine, matrix_url, chromium_result, tiny_build):
    result = chromium_result if engine == "chromium" else _firefox(matrix_url) if engine == "firefox" else _webkit(matrix_url)
    assert "fatal" not in result, result
    load = result["load"]
    assert load["ok"] and load["backend"] == "wasm" and load["variant"] == "fp32", load
    if engine == "webkit":  # no SharedArrayBuffer in WebKitGTK: one thread, and the cutter says why
        assert load["threads"] == 1 and "SharedArrayBuffer" in load["threadsReason"], load
    else:
        assert load["threads"] == 2 and load["crossOriginIsolated"], load

    # the mask: Chromium's (bit for bit at the same thread count; fp32's sums in WASM round differently on one
    # thread, ~1e-6, which can move a pixel across an 8-bit step), and the Python reference's within 2/255
    alpha, chromium = _alpha(result).astype(int), _alpha(chromium_result).astype(int)
    if load["threads"] == chromium_result["load"]["threads"]:
        assert np.array_equal(alpha, chromium), f"{engine}'s mask differs from Chromium's"
    else:
        assert np.abs(alpha - chromium).max() <= 1 and (alpha != chromium).mean() < 1e-3, f"{engine}'s mask differs"
    rgb = load_rgb(sample_photos()[0])
    build = json.loads((tiny_build / "manifest.json").read_text())
    reference = python_alpha(tiny_build / build["variants"]["fp32"]["path"], build, rgb)
    assert np.abs(alpha / 255 - reference).mean() <= 2 / 255

    # formats: what was asked, or a clear refusal (WebKit's canvas has no WebP encoder)
    magic = {"png": [0x89, 0x50, 0x4E, 0x47], "jpeg": [0xFF, 0xD8, 0xFF], "webp": [0x52, 0x49, 0x46, 0x46]}
    for fmt, out in result["formats"].items():
        if out["ok"]:
            assert out["type"] == f"image/{fmt}" and out["head"][:len(magic[fmt])] == magic[fmt], (fmt, out)
        else:
            assert engine == "webkit" and fmt == "webp" and out["code"] == "unsupported-format", (fmt, out)
            assert "WebP" in out["message"], out
    if engine != "webkit":
        assert all(out["ok"] for out in result["formats"].values()), result["formats"]

    # bad inputs: the same error codes in every engine, and the cutter keeps working
    bad = {name: out["code"] for name, out in result["bad"].items()}
    assert bad == {name: out["code"] for name, out in chromium_result["bad"].items()}, bad
    assert bad["empty"] == "empty" and bad["badOption"] == "options", bad
    assert bad["noise"] in ("unsupported-format", "decode") and bad["truncated"] in ("decode", "unsupported-format"), bad
    items = result["batch"]["items"]
    assert [(i["ok"], i["code"]) for i in items] == [(True, None), (False, "empty"), (True, None)], items
    assert result["stillWorks"]["ok"], result["stillWorks"]

