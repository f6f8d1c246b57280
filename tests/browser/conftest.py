"""Browser tests: real headless Chromium (Debian's /usr/bin/chromium via Playwright) against bundles served
by Debian's nginx with the CDN headers. Bundles are built from a tiny random-init U^2-NetP (64 px) into temp
folders; the real default model is used when `build/isnet-imgly/` exists."""
from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from web_runtime.build_bundle import ORT_PACKAGE, build_bundle  # noqa: E402
from common.chromium import CHROMIUM  # noqa: E402
from web_runtime.serve import NginxServer, find_nginx  # noqa: E402

REAL_BUILD = REPO / "build" / "isnet-imgly"
TINY_CHUNK_BYTES = 1024 * 1024  # several chunks even for the tiny model


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (run `make setup-system`)"
    if find_nginx() is None:
        return "nginx is not installed (run `make setup-system`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (run `make setup-python`)"
    if not (ORT_PACKAGE / "package.json").exists():
        return "web_runtime/node_modules missing (run `make setup-web`)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "tests/browser" in str(item.fspath):
                item.add_marker(skip)


def real_manifest() -> dict | None:
    try:
        manifest = json.loads((REAL_BUILD / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if "preprocessing" in manifest and manifest.get("variants") else None


def real_variant() -> str | None:
    manifest = real_manifest()
    if manifest is None:
        return None
    for name in ("fp32", "int8w"):
        entry = manifest["variants"].get(name)
        if entry and (REAL_BUILD / entry["path"]).exists():
            return name
    return None


@pytest.fixture(scope="session")
def web_root(tmp_path_factory, tiny_build) -> Path:
    """The served folder: /tiny/ (good bundle), /tampered/ (one flipped byte), /truncated/ (a short chunk),
    /real/ (isnet-imgly, when built), /harness.html (an empty same-origin page for API tests)."""
    root = tmp_path_factory.mktemp("www")
    build_bundle(tiny_build, root / "tiny", backends=("wasm", "webgpu"), chunk_bytes=TINY_CHUNK_BYTES)
    for name, damage in (("tampered", _flip_byte), ("truncated", _truncate)):
        shutil.copytree(root / "tiny", root / name)
        manifest = json.loads((root / name / "manifest.json").read_text())
        chunk = manifest["variants"]["fp32"]["chunks"][1]["path"]
        damage(root / name / chunk)
    variant = real_variant()
    if variant:
        build_bundle(REAL_BUILD, root / "real", variants=[variant], backends=("wasm",))
    (root / "harness.html").write_text("<!doctype html><meta charset=utf-8><title>harness</title><body></body>")
    (root / "favicon.ico").write_bytes(b"")
    from eval.images import sample_photos

    shutil.copyfile(sample_photos()[0], root / "photo.png")  # a same-origin image URL
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    root.chmod(0o755)
    return root


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="session")
def server(web_root):
    with NginxServer(web_root) as srv:
        yield srv


class Harness:
    """A page on the test origin with helpers to load a cutter and cut images given as bytes."""

    def __init__(self, context, page, base_url: str):
        self.context, self.page, self.base_url = context, page, base_url
        self.requests: list = []
        context.on("request", lambda request: self.requests.append(request))

    def open(self, path: str = "/harness.html") -> None:
        self.page.goto(self.base_url + path)

    def load(self, bundle: str = "tiny", **options) -> dict:
        """createCutter for a bundle folder of the test origin (`tiny`) or a folder URL (`http://…/`)."""
        return self.page.evaluate(LOAD_JS, [bundle, options])

    def cut(self, data: bytes, **options) -> dict:
        result = self.page.evaluate(CUT_JS, [base64.b64encode(data).decode(), options])
        if result.get("ok") and "rgba" in result:
            rgba = np.frombuffer(base64.b64decode(result.pop("rgba")), np.uint8)
            result["rgba"] = rgba.reshape(result["height"], result["width"], 4)
        return result

    def network_requests(self) -> list:
        return [r for r in self.requests if r.url.startswith("http")]


LOAD_JS = """async ([bundle, options]) => {
  const base = bundle.includes('://') ? bundle : `/${bundle}/`;  // a bundle folder of this origin, or a URL
  const m = await import(`${base}clearcut.js`);
  window.progressEvents = [];
  try {
    window.cutter = await m.createCutter({ manifestUrl: `${base}manifest.json`,
      onProgress: (p) => window.progressEvents.push(p), ...options });
    return { ok: true, ...window.cutter.info };
  } catch (e) {
    return { ok: false, code: e.code, message: e.message };
  }
}"""

CUT_JS = """async ([b64, options]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const started = performance.now();
  try {
    const timing = {};
    const r = await window.cutter.cut(new Blob([bytes]), { ...options, timing });
    const ms = performance.now() - started;
    if (r instanceof ImageData) {
      let s = '';
      for (let i = 0; i < r.data.length; i += 0x8000) s += String.fromCharCode.apply(null, r.data.subarray(i, i + 0x8000));
      return { ok: true, width: r.width, height: r.height, rgba: btoa(s), ms, inferenceMs: timing.inferenceMs };
    }
    return { ok: true, type: r.type, size: r.size, ms, inferenceMs: timing.inferenceMs };
  } catch (e) {
    return { ok: false, code: e.code, message: e.message, name: e.name };
  }
}"""


@pytest.fixture()
def harness(browser, server):
    # bypass_csp: the tests evaluate scripts in the page; the demo-page test runs with the real CSP.
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    h = Harness(context, page, server.url)
    h.open()
    yield h
    context.close()


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def python_alpha(onnx_path: Path | list[Path], manifest: dict, rgb: np.ndarray) -> np.ndarray:
    """The Python reference: same preprocessing, onnxruntime on the same ONNX file (or browser stages, a list
    of files run in sequence), bilinear to full size."""
    import onnxruntime as ort
    from eval.images import alpha_to_image_size, preprocess
    from models.registry import Preprocessing

    pre = Preprocessing.from_dict(manifest["preprocessing"])
    if isinstance(onnx_path, (list, tuple)):
        from common.sessions import run_stages
        return alpha_to_image_size(run_stages(onnx_path, preprocess(rgb, pre))[0, 0], rgb.shape[:2])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = manifest["output"]
    alpha = session.run([out["output_name"]], {out["input_name"]: preprocess(rgb, pre)})[0]
    return alpha_to_image_size(alpha[0, 0], rgb.shape[:2])
