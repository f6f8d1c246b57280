"""One download, a graph per engine: a coded variant's container carries its WASM graph (int8 QDQ) and its WebGPU
graph (same int8 weights, float activations); on WebGPU the worker decodes the WebGPU graph, checks the engine on
the probe input before trusting it, and falls back to WASM with a reason when the probe disagrees. On Chromium's
software adapter (SwiftShader) with the tiny coded build; the real model's WebGPU graphs get the placement check."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil

import numpy as np
import pytest

from common.probe import probe_difference, probe_input
from eval.images import load_rgb, sample_photos
from quantize import ccw
from web_runtime.build_bundle import build_bundle
from common.chromium import WEBGPU_ARGS, launch

from .conftest import REAL_BUILD, Harness, python_alpha, real_manifest

VARIANT = "int8p3"


@pytest.fixture(scope="module")
def gpu_bundles(web_root, coded_build) -> dict:
    """/gpu/ (int8 plain, int8p3 coded with its WebGPU graph; wasm + webgpu runtimes) and /gpu-badprobe/ (the same
    files, the WebGPU graph's expected probe alpha inverted in the manifest). Returns /gpu/'s manifest."""
    build_bundle(coded_build[0], web_root / "gpu", variants=["int8", VARIANT], backends=("wasm", "webgpu"))
    shutil.copytree(web_root / "gpu", web_root / "gpu-badprobe")
    manifest = json.loads((web_root / "gpu" / "manifest.json").read_text())
    bad = json.loads(json.dumps(manifest))
    probe = bad["variants"][VARIANT]["engines"]["webgpu"]["probe"]
    probe["expected"] = base64.b64encode(bytes(255 - b for b in base64.b64decode(probe["expected"]))).decode()
    (web_root / "gpu-badprobe" / "manifest.json").write_text(json.dumps(bad))
    for path in [*web_root.rglob("gpu*"), *(web_root / "gpu-badprobe").rglob("*"), *(web_root / "gpu").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest


@pytest.fixture(scope="module")
def gpu(playwright_instance, server, gpu_bundles):
    browser = launch(playwright_instance, WEBGPU_ARGS)
    context = browser.new_context(bypass_csp=True)
    h = Harness(context, context.new_page(), server.url)
    h.open()
    if not h.page.evaluate("async () => !!(navigator.gpu && await navigator.gpu.requestAdapter())"):
        browser.close()
        pytest.skip("this Chromium offers no WebGPU adapter even with --enable-unsafe-webgpu")
    yield h
    browser.close()


def test_the_container_decodes_to_both_graphs_in_python(coded_build, gpu_bundles, web_root):
    build_dir, data = coded_build[0], coded_build[1]
    entry = gpu_bundles["variants"][VARIANT]
    container = b"".join((web_root / "gpu" / c["path"]).read_bytes() for c in entry["chunks"])
    assert hashlib.sha256(container).hexdigest() == entry["coded"]["sha256"]
    assert hashlib.sha256(ccw.decode(container)).hexdigest() == entry["sha256"]
    webgpu = entry["engines"]["webgpu"]
    decoded = ccw.decode(container, webgpu["graph"])
    assert hashlib.sha256(decoded).hexdigest() == webgpu["sha256"] and len(decoded) == webgpu["bytes"]
    assert decoded == (build_dir / data["variants"][VARIANT]["engines"]["webgpu"]["path"]).read_bytes()
    # the second skeleton is what one download costs for both engines
    single = (build_dir / data["stages"][f"variant:{VARIANT}"]["result"]["container"]["path"]).read_bytes()
    assert len(container) - len(single) < 0.4 * len(single)
    assert entry["backends"] == ["wasm", "webgpu"] and gpu_bundles["variants"]["int8"]["backends"] == ["wasm"]


def test_webgpu_runs_the_webgpu_graph_and_checks_it_on_the_probe(gpu, gpu_bundles, coded_build):
    info = gpu.load("gpu", variant=VARIANT, backend="webgpu")
    assert info["ok"], info
    assert info["backend"] == "webgpu" and info["graph"] == f"{VARIANT}:webgpu" and info["fallbackReason"] is None, info
    probe = info["probe"]
    assert probe["engine"] == "webgpu" and probe["passed"] and probe["difference"] <= probe["tolerance"], probe
    # the expected alpha is native onnxruntime's on the same graph and input; JS builds the input the same way
    build_dir, data = coded_build[0], coded_build[1]
    engine = data["variants"][VARIANT]["engines"]["webgpu"]
    pre = gpu_bundles["preprocessing"]
    from common.sessions import cpu_session, run_stage
    native = run_stage(cpu_session(build_dir / engine["path"]), {"input": probe_input(pre["input_size"], pre["mean"], pre["std"])})[0]
    assert probe_difference(native, engine["probe"]) < 0.002  # the recorded grid is 8-bit

    photo = sample_photos()[0]
    rgb = load_rgb(photo)
    mask = gpu.cut(photo.read_bytes(), output="mask", format="raw")
    assert mask["ok"], mask
    reference = python_alpha(build_dir / engine["path"], gpu_bundles, rgb)
    gpu_alpha = mask["rgba"][..., 0].astype(np.float32) / 255
    assert float(np.abs(gpu_alpha - reference).mean()) <= 2 / 255

    # WASM runs the int8 QDQ graph of the same download; the two engines agree within the variant's gate
    info = gpu.load("gpu", variant=VARIANT, backend="wasm")
    assert info["ok"] and info["backend"] == "wasm" and info["graph"] == VARIANT and info["probe"] is None, info
    wasm = gpu.cut(photo.read_bytes(), output="mask", format="raw")
    wasm_alpha = wasm["rgba"][..., 0].astype(np.float32) / 255
    limits = data["variants"][VARIANT]["parity"]
    assert float(np.abs(gpu_alpha - wasm_alpha).mean()) <= max(0.05, 2 * limits["mean_abs"])


def test_a_probe_that_disagrees_falls_back_to_wasm(gpu):
    info = gpu.load("gpu-badprobe", variant=VARIANT, backend="webgpu")
    assert info["ok"], info
    assert info["backend"] == "wasm" and info["graph"] == VARIANT, info
    assert "probe" in info["fallbackReason"] and "WASM" in info["fallbackReason"], info
    assert info["probe"]["passed"] is False and info["probe"]["difference"] > info["probe"]["tolerance"]
    assert gpu.cut(sample_photos()[1].read_bytes())["ok"]


def test_an_int8_activation_variant_without_a_webgpu_graph_stays_on_wasm(gpu):
    info = gpu.load("gpu", variant="int8", backend="webgpu")
    assert not info["ok"] and info["code"] == "backend" and "no WebGPU graph" in info["message"], info
    info = gpu.load("gpu", variant="int8", backend="auto")
    assert info["ok"] and info["backend"] == "wasm", info


def test_the_real_models_webgpu_graphs_run_every_node_on_the_gpu():
    """Each WebGPU graph the real build ships: a Chromium session with CPU fallback disabled (no inference)."""
    from eval.webgpu_placement import check_placement

    manifest = real_manifest()
    graphs = [e["engines"]["webgpu"] for e in (manifest or {}).get("variants", {}).values()
              if (e.get("engines") or {}).get("webgpu", {}).get("passed")]
    if not graphs:
        pytest.skip("build/isnet-imgly has no WebGPU graphs (run `make export`)")
    results = check_placement([(REAL_BUILD / g["path"], g["session_config"]) for g in graphs])
    assert all(r["all_on_webgpu"] for r in results), results


def test_the_placement_check_tells_both_graphs_apart_beside_a_running_browser(gpu, coded_build):
    """The export's check (a child process: Playwright cannot start a second time in this one, which drives `gpu`):
    the WebGPU graph runs every node on the GPU, the int8 QDQ graph of the same variant does not."""
    from eval.webgpu_placement import check_placement

    build_dir, data = coded_build[0], coded_build[1]
    entry = data["variants"][VARIANT]
    webgpu, qdq = check_placement([(build_dir / entry["engines"]["webgpu"]["path"], {}), (build_dir / entry["path"], {})])
    assert webgpu["all_on_webgpu"] and webgpu["wasm_heap_bytes"] > 0, webgpu
    assert not qdq["all_on_webgpu"] and "CPU" in qdq["message"], qdq
