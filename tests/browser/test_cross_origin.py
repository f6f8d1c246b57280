"""The bundle on one origin, the page on another: the runtime imported straight from a CDN (the bundle published
by `clearcut publish`), the npm package bundled into an app with `baseUrl`, offline after the first visit, a new
bundle picked up when the network is back, and the integrity of the files kept for offline use.

Two nginx servers on different ports are two origins: A (the `server` fixture: the page, with COOP/COEP) and B
(the bundle, with its generated host config)."""
from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from eval.images import load_rgb, sample_photos
from web_runtime.build_bundle import build_bundle
from web_runtime.serve import NginxServer, free_port

from .conftest import REPO, TINY_CHUNK_BYTES, Harness, python_alpha

WEB_RUNTIME = REPO / "web_runtime"
PHOTO = next(p for p in sample_photos() if p.name == "astronaut.png")
FILE_CACHE, CHUNK_CACHE = "clearcut-files-v1", "clearcut-chunks-v1"
CACHED_URLS_JS = "async (name) => (await (await caches.open(name)).keys()).map((r) => r.url)"


def _readable(root) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _check_mask(harness, tiny_build, variant: str) -> float:
    """Cut the photo to a mask in the page and compare it with Python onnxruntime on the same ONNX file."""
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    rgb = load_rgb(PHOTO)
    reference = python_alpha(tiny_build / manifest["variants"][variant]["path"], manifest, rgb)
    mask = harness.cut(PHOTO.read_bytes(), output="mask", format="raw", refine=False)
    assert mask["ok"], mask
    assert (mask["height"], mask["width"]) == rgb.shape[:2]
    mean_abs = float(np.abs(mask["rgba"][..., 0].astype(np.float32) / 255 - reference).mean())
    assert mean_abs <= 2 / 255, f"mean abs diff {mean_abs * 255:.2f}/255"
    return mean_abs


# ---- the runtime imported from a CDN ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cdn(web_root, tmp_path_factory):
    """Origin B: the tiny bundle published to a folder by `clearcut publish` (versioned layout, its own host
    config), served by nginx; yields the version folder's URL."""
    from web_runtime.publish import publish

    folder = tmp_path_factory.mktemp("cdn")
    report = publish(web_root / "tiny", str(folder), brotli_quality=None, log=lambda _line: None)
    assert not report.problems, report.problems
    _readable(folder)
    with NginxServer(folder) as server:
        yield f"{server.url.replace('127.0.0.1', 'localhost')}/{report.version}/"


def test_page_on_another_origin_imports_the_runtime_from_the_cdn(harness, cdn, tiny_build):
    assert not cdn.startswith(harness.base_url)
    started = time.monotonic()
    info = harness.load(cdn, variant="fp32", numThreads=2)
    assert info["ok"], info
    print(f"cross-origin load: {time.monotonic() - started:.1f} s, {info['threads']} threads")
    assert info["crossOriginIsolated"] and info["threads"] == 2 and info["threadsReason"] is None, info
    # The worker runs from a blob: trampoline of the page's origin; onnxruntime's pthread worker too (its .mjs
    # runs from a blob: URL of verified bytes): nothing is started from the CDN's origin.
    page_origin = harness.base_url
    workers = [w.url for w in harness.page.workers]
    assert len(workers) >= 2, workers
    assert all(url.startswith(f"blob:{page_origin}/") for url in workers), workers
    _check_mask(harness, tiny_build, "fp32")
    # Every request to B was a CORS GET; the page fetched nothing else from B than the bundle's files.
    to_cdn = [r for r in harness.network_requests() if r.url.startswith(cdn)]
    assert {r.url.removeprefix(cdn) for r in to_cdn} >= {"clearcut.js", "worker.js", "manifest.json"}
    assert all(r.method == "GET" for r in to_cdn)


@pytest.fixture()
def plain_origin():
    """A page server that sends no COOP/COEP (Python's http.server, one page): not cross-origin isolated."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"<!doctype html><meta charset=utf-8><title>plain</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_without_cross_origin_isolation_it_runs_on_one_thread_and_says_why(browser, cdn, plain_origin, tiny_build):
    context = browser.new_context(bypass_csp=True)
    try:
        harness = Harness(context, context.new_page(), plain_origin)
        harness.open("/plain.html")
        info = harness.load(cdn, variant="fp32")
        assert info["ok"], info
        assert not info["crossOriginIsolated"] and info["threads"] == 1, info
        assert "not cross-origin isolated" in info["threadsReason"] and "Cross-Origin-Embedder-Policy" in info["threadsReason"]
        _check_mask(harness, tiny_build, "fp32")
    finally:
        context.close()


# ---- offline -----------------------------------------------------------------------------------------------

def test_network_gone_a_new_cutter_starts_from_the_cache(harness, tiny_build):
    """The whole network drops while the page is open: a new cutter starts its worker, onnxruntime and the
    model from the Cache API copies the first load kept, with the last good manifest."""
    info = harness.load("tiny", variant="fp32")
    assert info["ok"] and not info["offline"], info
    harness.page.evaluate("window.cutter.dispose()")
    harness.context.set_offline(True)
    started = time.monotonic()
    info = harness.load("tiny", variant="fp32")
    print(f"offline start (same origin): {time.monotonic() - started:.1f} s")
    assert info["ok"], info
    assert info["offline"] and info["threads"] >= 1, info
    _check_mask(harness, tiny_build, "fp32")


@pytest.fixture(scope="module")
def tampered_runtime(web_root) -> dict[str, str]:
    """Copies of the tiny bundle with one runtime file altered: a worker module (still valid JavaScript, so the
    browser runs it) and onnxruntime's wasm."""
    manifest = json.loads((web_root / "tiny" / "manifest.json").read_text())
    wasm = f"{manifest['runtime']['ort_dir']}/ort-wasm-simd-threaded.wasm"
    bundles = {"tampered-js": "refine.js", "tampered-wasm": wasm}
    for name, path in bundles.items():
        if not (web_root / name).exists():
            shutil.copytree(web_root / "tiny", web_root / name)
        target = web_root / name / path
        data = bytearray(target.read_bytes())
        if path.endswith(".js"):
            data += b"\n// altered after the build\n"
        else:
            data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        _readable(web_root / name)
    return bundles


@pytest.mark.parametrize("bundle", ["tampered-js", "tampered-wasm"])
def test_a_tampered_runtime_file_is_refused_and_not_cached(harness, tampered_runtime, bundle):
    path = tampered_runtime[bundle]
    result = harness.load(bundle, variant="fp32")
    assert not result["ok"] and result["code"] == "integrity", result
    assert f"Runtime file {path} failed its integrity check" in result["message"], result
    assert "not used or cached" in result["message"]
    cached = harness.page.evaluate(CACHED_URLS_JS, FILE_CACHE)
    assert not [u for u in cached if u.endswith(f"/{bundle}/{path}")], "the tampered file was cached"
    assert not [u for u in cached if u.endswith(f"/{bundle}/manifest.json")], "a failed load's manifest was kept"


def test_a_worker_of_another_runtime_version_is_refused(harness, web_root):
    """The npm runtime and the CDN's worker must be the same release: a bundle of another version says so."""
    skewed = web_root / "skewed"
    if not skewed.exists():
        shutil.copytree(web_root / "tiny", skewed)
        version = skewed / "version.js"
        version.write_text(version.read_text().replace("VERSION = '", "VERSION = '9."))
        _readable(skewed)
    result = harness.load("tiny", workerUrl="/skewed/worker.js")
    assert not result["ok"] and result["code"] == "worker", result
    assert "is ClearCut runtime 9." in result["message"] and "baseUrl" in result["message"], result


# ---- the npm package, bundled into an app ------------------------------------------------------------------

APP_JS = """import { createCutter, VERSION } from '@clearcut/runtime';

// The app's own code: the runtime comes from npm (bundled here), the model and onnxruntime from the CDN.
const cdn = new URLSearchParams(location.search).get('cdn');
window.app = {
  VERSION,
  async load(options) {
    try {
      window.cutter = await createCutter({ baseUrl: cdn, ...options });
      return { ok: true, ...window.cutter.info };
    } catch (e) {
      return { ok: false, code: e.code, message: e.message };
    }
  },
};
"""

# What README documents for a page whose runtime is its own (npm) and whose bundle is on another origin: the
# worker's module graph counts as worker scripts, onnxruntime runs from blob: modules, the bundle is fetched.
APP_CSP = ("default-src 'self'; script-src 'self' blob: 'wasm-unsafe-eval'; worker-src {cdn} blob:; "
           "connect-src {cdn}; img-src 'self' blob: data:")


@pytest.fixture(scope="module")
def npm_app(web_root, tmp_path_factory):
    """`npm pack` of web_runtime, installed from the tarball into a new app and bundled by esbuild into
    web_root/app/ (origin A). Yields the pack's file list and sizes, and the port origin B must use (the
    app's CSP names it)."""
    work = tmp_path_factory.mktemp("npm")
    env_flags = ["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    packed = subprocess.run(["npm", "pack", str(WEB_RUNTIME), "--json", "--pack-destination", str(work), *env_flags],
                            cwd=work, capture_output=True, text=True, check=True)
    pack = json.loads(packed.stdout)[0]
    app = work / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "clearcut-test-app", "private": True, "type": "module"}))
    subprocess.run(["npm", "install", str(work / pack["filename"]), "--offline", *env_flags],
                   cwd=app, capture_output=True, text=True, check=True)
    (app / "main.js").write_text(APP_JS)
    out = web_root / "app"
    out.mkdir(exist_ok=True)
    subprocess.run([str(WEB_RUNTIME / "node_modules" / ".bin" / "esbuild"), "main.js", "--bundle", "--format=esm",
                    "--minify", f"--outfile={out / 'app.js'}", "--log-level=warning"], cwd=app, check=True)
    port = free_port()
    csp = APP_CSP.format(cdn=f"http://127.0.0.1:{port}")
    (out / "index.html").write_text(f'<!doctype html><meta charset=utf-8><meta http-equiv="Content-Security-Policy" '
                                    f'content="{csp}"><title>app</title><script type="module" src="app.js"></script>')
    _readable(out)
    return {"pack": pack, "app": app, "bundle": out / "app.js", "cdn_port": port}


def test_npm_package_contents(npm_app):
    pack = npm_app["pack"]
    files = {f["path"] for f in pack["files"]}
    print(f"npm package {pack['filename']}: {pack['size']} bytes packed, {pack['unpackedSize']} unpacked, {len(files)} files")
    assert {"package.json", "src/clearcut.js", "src/worker.js", "src/clearcut.d.ts", "src/manifest.d.ts"} <= files
    assert not [f for f in files if f.startswith("node_modules/") or f.endswith(".py")], files
    installed = json.loads((npm_app["app"] / "node_modules" / "@clearcut" / "runtime" / "package.json").read_text())
    assert installed["exports"]["."] == {"types": "./src/clearcut.d.ts", "default": "./src/clearcut.js"}
    assert not installed.get("private") and not installed.get("dependencies")
    version = (WEB_RUNTIME / "src" / "version.js").read_text()
    assert f"VERSION = '{installed['version']}'" in version, "src/version.js must carry package.json's version"
    bundled = npm_app["bundle"].read_text()
    print(f"app bundle (esbuild --minify, runtime included): {len(bundled.encode())} bytes")
    assert "InferenceSession" not in bundled and "refineEdges" not in bundled, "the worker's code must not be in the app"


def test_npm_app_without_base_url_says_to_pass_it(browser, server, npm_app):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.url}/app/index.html")  # no ?cdn=: createCutter({ baseUrl: null })
        result = page.evaluate("window.app.load({})")
        assert not result["ok"] and result["code"] == "worker", result
        assert f"{server.url}/app/worker.js" in result["message"] and "pass baseUrl" in result["message"], result
    finally:
        context.close()


def test_npm_app_with_the_bundle_on_a_cdn_works_offline_and_takes_a_new_bundle(browser, server, npm_app, tiny_build,
                                                                                tmp_path):
    """First visit (parity with Python, the documented CSP, no bypass); the CDN goes down: a reload still cuts
    from the Cache API; the CDN comes back with a new bundle: the next load switches to it and drops what only
    the old one used."""
    cdn_root = tmp_path / "cdn"
    build_bundle(tiny_build, cdn_root / "tiny", backends=("wasm",), chunk_bytes=TINY_CHUNK_BYTES)  # fp32 + fp16
    _readable(cdn_root)
    cdn_url = f"http://127.0.0.1:{npm_app['cdn_port']}/tiny/"
    context = browser.new_context()  # the app's own CSP applies
    page = context.new_page()
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    harness = Harness(context, page, server.url)
    app_url = f"/app/index.html?cdn={cdn_url}"

    def load() -> dict:
        return page.evaluate("""async () => {
          while (!window.app) await new Promise((resolve) => setTimeout(resolve, 20));
          return window.app.load({ numThreads: 2 });
        }""")

    try:
        cdn = NginxServer(cdn_root, port=npm_app["cdn_port"]).start()
        try:
            harness.open(app_url)
            first = load()
            assert first["ok"], first
            assert first["variant"] == "fp16" and not first["offline"] and first["threads"] == 2, first
            assert first["crossOriginIsolated"]
            _check_mask(harness, tiny_build, "fp16")
            fetched = {r.url.removeprefix(cdn_url) for r in harness.network_requests() if r.url.startswith(cdn_url)}
            # the page-side modules are the app's own; the worker and its modules come from the CDN
            assert not fetched & {"clearcut.js", "boot.js"} and {"worker.js", "loader.js", "manifest.json"} <= fetched, fetched
        finally:
            cdn.stop()

        # The CDN is unreachable; the app (origin A) is still served.
        page.reload()
        started = time.monotonic()
        offline = load()
        print(f"offline reload (CDN down) to ready: {time.monotonic() - started:.1f} s")
        assert offline["ok"], offline
        assert offline["offline"] and offline["variant"] == "fp16" and offline["threads"] == 2, offline
        _check_mask(harness, tiny_build, "fp16")
        old_chunks = set(page.evaluate(CACHED_URLS_JS, CHUNK_CACHE))

        # A new bundle is published at the same URL (fp32 only, so its default variant is fp32).
        build_bundle(tiny_build, cdn_root / "tiny", variants=["fp32"], backends=("wasm",), chunk_bytes=TINY_CHUNK_BYTES)
        _readable(cdn_root)
        cdn = NginxServer(cdn_root, port=npm_app["cdn_port"]).start()
        try:
            page.reload()
            updated = load()
            assert updated["ok"], updated
            assert not updated["offline"] and updated["variant"] == "fp32", updated
            _check_mask(harness, tiny_build, "fp32")
        finally:
            cdn.stop()
        new_manifest = json.loads((cdn_root / "tiny" / "manifest.json").read_text())
        new_chunks = {cdn_url + c["path"] for c in new_manifest["variants"]["fp32"]["chunks"]}
        chunks = set(page.evaluate(CACHED_URLS_JS, CHUNK_CACHE))
        assert new_chunks <= chunks
        assert not [u for u in old_chunks - new_chunks if u in chunks], "chunks only the old bundle used were kept"
        assert csp_errors == [], csp_errors
    finally:
        context.close()
