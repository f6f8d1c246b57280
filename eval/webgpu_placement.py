"""Does every node of a graph run on onnxruntime-web's WebGPU engine? Checked where users run it: in headless
Chromium (Debian's, on its software adapter SwiftShader), with the npm onnxruntime-web build the bundle ships,
a session created with ``session.disable_cpu_ep_fallback`` — onnxruntime then refuses a graph that would put
any node on the CPU (e.g. QuantizeLinear, which has no WebGPU kernel). No inference runs: a 1024² run takes
minutes on the software adapter, and placement is decided when the session is created.

The export gates each WebGPU engine graph on it; the files are served to the page through Playwright's
request routing from a made-up origin (no server, no network).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from eval.wasm_engine import ORT_WEB_PACKAGE, WASM_ENGINE_VERSION

REPO = Path(__file__).resolve().parents[1]
ORIGIN = "https://placement.clearcut.invalid"
ORT_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
TYPES = {"mjs": "text/javascript", "wasm": "application/wasm", "html": "text/html", "onnx": "application/octet-stream"}
ENGINE = f"onnxruntime-web {WASM_ENGINE_VERSION} webgpu, Chromium software adapter"

_PAGE = """<!doctype html><script type="module">
// the WASM heap onnxruntime grows for a session (what `cutter.memory()` reports): its memories, recorded
const memories = [];
const NativeMemory = WebAssembly.Memory;
WebAssembly.Memory = function (descriptor) { const m = new NativeMemory(descriptor); memories.push(m); return m; };
WebAssembly.Memory.prototype = NativeMemory.prototype;
const ort = await import('./ort/ort.webgpu.min.mjs');
ort.env.wasm.numThreads = 1;
ort.env.logLevel = 'error';
window.placement = (url, config, backend, seconds) => Promise.race([create(url, config, backend),
  new Promise((resolve) => setTimeout(() => resolve({ ok: false, message: `no session within ${seconds} s` }), seconds * 1000))]);
const create = async (url, config, backend) => {
  const adapter = navigator.gpu && await navigator.gpu.requestAdapter();
  if (backend === 'webgpu' && !adapter) return { error: 'no WebGPU adapter (Chromium without --enable-unsafe-webgpu?)' };
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const extra = backend === 'webgpu' ? { ...config, 'session.disable_cpu_ep_fallback': '1' } : { ...config };
  try {
    const session = await ort.InferenceSession.create(bytes, { executionProviders: [backend], graphOptimizationLevel: 'all', extra });
    const heap = memories.reduce((sum, m) => sum + m.buffer.byteLength, 0);
    await session.release();
    return { ok: true, heap };
  } catch (err) {
    return { ok: false, message: String(err?.message ?? err) };
  }
};
window.ready = true;
</script>"""


def placement_available() -> str | None:
    """None when the check can run here, else why not."""
    from common.chromium import CHROMIUM
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run `make setup-system`)"
    if WASM_ENGINE_VERSION is None:
        return f"onnxruntime-web is not installed in {ORT_WEB_PACKAGE.parent} (run `make setup`)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (run `make setup`)"
    return None


def check_placement(graphs: Sequence[tuple[Path, dict]], timeout_s: float = 900, backend: str = "webgpu") -> list[dict]:
    """For each (graph, session config): ``{"all_on_webgpu": bool, "message": onnxruntime's error or None,
    "wasm_heap_bytes": the WASM heap with the session created}`` — each graph in a fresh page, so the heap is its
    own. ``backend="wasm"``: the same session on the WASM engine (for comparing heaps; ``all_on_webgpu`` False).

    Runs in a child process: Playwright's sync API cannot start inside a process that already drives a browser
    with it (the test suite), and a browser that runs out of memory takes only the child down."""
    reason = placement_available()
    if reason:
        raise RuntimeError(f"the WebGPU placement check cannot run: {reason}")
    job = {"graphs": [[str(Path(g).resolve()), dict(c)] for g, c in graphs], "timeout_s": timeout_s, "backend": backend}
    limit = timeout_s * max(1, len(graphs)) + 120
    # its own process group: on a timeout the browser it started goes too (and with it the pipes it holds)
    child = subprocess.Popen([sys.executable, "-m", "eval.webgpu_placement", "--job", json.dumps(job)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise RuntimeError(f"the WebGPU placement check did not finish within {limit:.0f} s") from None
    if child.returncode != 0:
        raise RuntimeError(f"the WebGPU placement check failed: {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _check_here(graphs: Sequence[tuple[Path, dict]], timeout_s: float, backend: str) -> list[dict]:
    """check_placement's work, in this process."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from common.chromium import WEBGPU_ARGS, launch

    served = {f"/ort/{f}": ORT_WEB_PACKAGE / "dist" / f for f in ORT_FILES}
    served.update({f"/graph{i}.onnx": Path(path) for i, (path, _) in enumerate(graphs)})

    def handle(route):
        path = "/" + route.request.url.split(ORIGIN, 1)[1].lstrip("/").split("?")[0]
        if path == "/":
            return route.fulfill(status=200, body=_PAGE, headers={"Content-Type": TYPES["html"]})
        file = served.get(path)
        if file is None:
            return route.fulfill(status=404, body="not found")
        return route.fulfill(status=200, body=file.read_bytes(), headers={"Content-Type": TYPES[path.rsplit(".", 1)[1]]})

    results = []
    with sync_playwright() as p:
        for i, (_, config) in enumerate(graphs):  # a browser per graph: its heap is the graph's, a crash is its own
            browser = launch(p, WEBGPU_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(timeout_s * 1000)
                page.route(f"{ORIGIN}/**", handle)
                page.goto(f"{ORIGIN}/")
                page.wait_for_function("window.ready === true")
                answer = page.evaluate("([url, config, backend, s]) => placement(url, config, backend, s)",
                                       [f"/graph{i}.onnx", dict(config), backend, timeout_s])
            except PlaywrightError as err:  # the page crashed (e.g. out of memory): this graph fails, not the check
                answer = {"ok": False, "message": f"no session: the page crashed ({str(err).splitlines()[0]})"}
            finally:
                try:
                    browser.close()
                except PlaywrightError:
                    pass
            if "error" in answer:
                raise RuntimeError(f"the WebGPU placement check cannot run: {answer['error']}")
            results.append({"all_on_webgpu": bool(answer["ok"]) and backend == "webgpu",
                            "message": answer.get("message"), "wasm_heap_bytes": answer.get("heap")})
    return results

if __name__ == "__main__":
    # python -m eval.webgpu_placement GRAPH.onnx ['{"session.disable_quant_qdq": "1"}' [wasm]]  (prints the result)
    # python -m eval.webgpu_placement --job JSON   (check_placement's child: the result as one JSON line)
    if sys.argv[1] == "--job":
        job = json.loads(sys.argv[2])
        found = _check_here([(Path(g), c) for g, c in job["graphs"]], job["timeout_s"], job["backend"])
        print(json.dumps(found))
    else:
        config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
        print(json.dumps(check_placement([(Path(sys.argv[1]), config)], backend=sys.argv[3] if len(sys.argv) > 3 else "webgpu"),
                         indent=2))
