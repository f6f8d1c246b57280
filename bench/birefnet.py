"""Benchmark the BiRefNet family at full size with random weights: export, variants, CPU inference.

    python -m bench.birefnet --config rmbg-2.0 --size 1024 [--variants fp32,fp16,int8w,int8]

    python -m bench.birefnet --config rmbg-2.0 --size 1024 --browser [--variants fp16,fp32] [--reuse]

Not a test: it takes minutes and GBs. Each step runs in its own process so that its peak RSS is its own.
Prints, per step, wall time and peak RSS; per variant, file size, node count, onnxruntime CPU session
creation and latency at the given size, agreement with fp32 on a photo; and the WebGPU-safety checks of
the fp32 graph (static shapes, Concat/Split fan-in, explicit Conv attributes, op types).

``--browser``: the registry's browser stages instead (backbone, decoder: one graph each, run in sequence and
released one by one), bundled and cut in headless Chromium on WASM (2 threads, cross-origin isolated, through
nginx as in tests/browser): cold and warm cut with per-stage session creation and run times, the WASM heap
size the worker reports (``cutter.memory()``; it never shrinks, so it is the peak) and the peak RSS of the
Chromium processes sampled from outside. A failed cut reports the stage and phase it died in.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _child(step, args: dict, queue) -> None:
    started = time.perf_counter()
    try:
        result = step(**args) or {}
        result["ok"] = True
    except BaseException as err:  # reported, not raised: the benchmark goes on with the next step
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"[:400]}
    result.update(seconds=round(time.perf_counter() - started, 1), peak_rss_mb=round(_peak_rss_mb()))
    queue.put(result)


def run_step(name: str, step, **args) -> dict:
    """Run ``step(**args)`` in a fresh process; its wall time and peak RSS are added to its result."""
    queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=_child, args=(step, args, queue))
    process.start()
    process.join()
    result = queue.get() if not queue.empty() else {
        "ok": False, "error": f"exit code {process.exitcode}" + (" (killed: out of memory?)" if process.exitcode == -9 else ""),
        "seconds": float("nan"), "peak_rss_mb": float("nan")}
    status = "ok" if result["ok"] else f"FAILED ({result['error']})"
    print(f"[{name}] {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb'] / 1024:.2f} GB, {status}", flush=True)
    return result


def random_model(config_name: str, seed: int = 0):
    """The registry architecture with random weights; offsets small so that deformable sampling moves."""
    import torch
    from models.architectures import build_model
    from models.registry import get_model_config

    torch.manual_seed(seed)
    model = build_model(get_model_config(config_name)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "offset_conv" in name or "modulator_conv" in name:
                param.normal_(std=0.01)
    return model


def step_export(config_name: str, size: int, path: str) -> dict:
    from export.torch_to_onnx import export_onnx
    from models.registry import get_model_config

    model = random_model(config_name)
    params = sum(p.numel() for p in model.parameters())
    export_onnx(model, get_model_config(config_name), Path(path), (size, size))
    return {"params": params}


def step_export_stages(config_name: str, size: int, paths: dict) -> dict:
    from export.torch_to_onnx import export_stages
    from models.registry import get_model_config

    model = random_model(config_name)
    stages = export_stages(model, get_model_config(config_name), {k: Path(v) for k, v in paths.items()}, (size, size))
    return {"stages": stages}


def step_torch_forward(config_name: str, size: int) -> dict:
    import torch

    model = random_model(config_name)
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode():
        started = time.perf_counter()
        model(x)
    return {"forward_s": round(time.perf_counter() - started, 1)}


def step_variant(config_name: str, variant: str, fp32: str, path: str) -> dict:
    from common.contract import INPUT_NAME
    from eval.images import load_rgb, preprocess, sample_photos
    from models.registry import get_model_config
    from quantize.recipes import Calibration, get_recipe

    config = get_model_config(config_name)
    photos = sample_photos()[:1]  # one calibration image: bounds the int8 calibration's memory and time
    pre = replace(config.preprocessing, input_size=(_onnx_size(Path(fp32)),) * 2)
    calibration = Calibration(photos, lambda p: {INPUT_NAME: preprocess(load_rgb(p), pre)}, {})
    get_recipe(variant).make(Path(fp32), Path(path), config, calibration)
    return {}


def _onnx_size(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.graph.input[0].type.tensor_type.shape.dim[2].dim_value


def step_run(config_name: str, path: str, out: str, runs: int) -> dict:
    import numpy as np
    from eval.images import load_rgb, preprocess, sample_photos
    from common.sessions import cpu_session
    from models.registry import get_model_config

    size = _onnx_size(Path(path))
    pre = replace(get_model_config(config_name).preprocessing, input_size=(size, size))
    x = preprocess(load_rgb(sample_photos()[0]), pre)
    started = time.perf_counter()
    session = cpu_session(Path(path))
    load_s = time.perf_counter() - started
    times = []
    alpha = None
    for _ in range(runs):
        started = time.perf_counter()
        alpha = session.run(None, {"input": x})[0]
        times.append(time.perf_counter() - started)
    np.save(out, alpha)
    return {"session_s": round(load_s, 1), "latency_s": [round(t, 2) for t in times]}


def graph_report(path: Path) -> dict:
    """Node counts and the WebGPU checks the export gate runs (common.onnx_graph.webgpu_problems)."""
    import onnx

    from common.onnx_graph import webgpu_problems

    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    return {
        "nodes": len(model.graph.node), "ops": dict(ops.most_common()),
        "webgpu_problems": webgpu_problems(model),
        "gather_or_scatter": sum(c for op, c in ops.items() if op.startswith(("Gather", "Scatter"))),
    }


def step_variant_stages(config_name: str, variant: str, paths: dict, targets: dict) -> dict:
    for stage, path in paths.items():
        step_variant(config_name, variant, path, targets[stage])
    return {}


BROWSER_JS = """async ([variant, threads, repeats]) => {
  const events = [];
  const report = { variant, cuts: [], memory: [] };
  const m = await import('/b/clearcut.js');
  const blob = await (await fetch('/photo.png')).blob();
  let cutter;
  const t0 = performance.now();
  try {
    cutter = await m.createCutter({ manifestUrl: '/b/manifest.json', variant, numThreads: threads,
                                    onProgress: (p) => events.push({ ...p, t: performance.now() - t0 }) });
  } catch (e) {
    return { ...report, error: `load: ${e.code}: ${e.message}`, events: events.slice(-3) };
  }
  report.loadMs = performance.now() - t0;
  report.threads = cutter.info.threads;
  report.coi = cutter.info.crossOriginIsolated;
  report.memory.push(['loaded', await cutter.memory()]);
  for (let i = 0; i <= repeats; i++) {
    const timing = {};
    const s = performance.now();
    try {
      await cutter.cut(blob, { output: 'mask', format: 'raw', timing, refine: false });
    } catch (e) {
      const last = events.filter((p) => p.phase === 'stage').at(-1);
      report.error = `cut ${i}: ${e.code}: ${e.message} (during stage ${last ? last.stage : '?'})`;
      report.memory.push([`cut ${i} (failed)`, await cutter.memory().catch(() => null)]);
      break;
    }
    report.cuts.push({ ms: performance.now() - s, ...timing });
    report.memory.push([`cut ${i}`, await cutter.memory()]);
  }
  cutter.dispose();
  return report;
}"""


def _chromium_rss_mb(root_pid: int) -> tuple[float, float]:
    """(sum, largest) RSS in MB of the Chromium processes below ``root_pid`` (from /proc)."""
    parents, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), None)
        if line and "chrom" in stat.split(")", 1)[0]:
            rss[int(entry.name)] = int(line.split()[1]) / 1024

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    mine = [v for pid, v in rss.items() if below(pid)]
    return sum(mine), max(mine, default=0.0)


def browser_run(out: Path, config_name: str, size: int, variants: list[str], threads: int, repeats: int) -> list:
    """Bundle the stage graphs in ``out`` and cut a photo with each variant in headless Chromium."""
    import os
    import shutil
    import threading

    from eval.images import sample_photos
    from models.registry import get_model_config
    from common.files import sha256_file
    from common.chromium import launch
    from export.pipeline import model_info, output_info
    from web_runtime.build_bundle import build_bundle
    from web_runtime.serve import NginxServer

    config = get_model_config(config_name)
    build_variants = {}
    for variant in variants:
        stages = []
        for name, inputs, outputs in _stage_io(config_name):
            path = out / f"{config_name}.{variant}.{name}.onnx"
            stages.append({"name": name, "path": path.name, "sha256": sha256_file(path),
                           "bytes": path.stat().st_size, "inputs": inputs, "outputs": outputs})
        build_variants[variant] = {"stages": stages}
    pre = replace(config.preprocessing, input_size=(size, size))
    (out / "manifest.json").write_text(json.dumps({
        "model": model_info(config),
        "preprocessing": pre.to_dict(),
        "output": output_info(config),
        "variants": build_variants}))
    www = out / "www"
    shutil.rmtree(www, ignore_errors=True)
    build_bundle(out, www / "b", variants=variants, backends=("wasm",))
    (www / "harness.html").write_text("<!doctype html><meta charset=utf-8><title>bench</title><body></body>")
    (www / "favicon.ico").write_bytes(b"")
    shutil.copyfile(sample_photos()[0], www / "photo.png")
    for path in www.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    www.chmod(0o755)

    from playwright.sync_api import sync_playwright

    results = []
    with NginxServer(www) as server, sync_playwright() as p:
        for variant in variants:
            browser = launch(p)
            peak = {"sum": 0.0, "max": 0.0}
            done = threading.Event()

            def sample():
                while not done.wait(0.5):
                    total, largest = _chromium_rss_mb(os.getpid())
                    peak["sum"], peak["max"] = max(peak["sum"], total), max(peak["max"], largest)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                page = browser.new_context(bypass_csp=True).new_page()
                page.goto(server.url + "/harness.html")
                page.set_default_timeout(0)
                result = page.evaluate(BROWSER_JS, [variant, threads, repeats])
            except Exception as err:  # noqa: BLE001 - a crashed page is a result
                result = {"variant": variant, "error": f"page: {err}"[:400], "cuts": [], "memory": []}
            finally:
                done.set()
                sampler.join()
                browser.close()
            result["chromium_rss_peak_mb"] = round(peak["sum"])
            result["chromium_rss_largest_process_mb"] = round(peak["max"])
            result["stage_bytes"] = {s["name"]: s["bytes"] for s in build_variants[variant]["stages"]}
            results.append(result)
            _print_browser(result)
    return results


def _stage_io(config_name: str) -> list[tuple[str, list[str], list[str]]]:
    from export.torch_to_onnx import model_stages
    from models.architectures import build_model
    from models.registry import get_model_config

    config = get_model_config(config_name)
    with _meta_device():
        model = build_model(config)
    return [(name, list(ins), list(outs)) for name, _, ins, outs in model_stages(model, config)]


def _meta_device():
    import torch
    return torch.device("meta")


def _print_browser(r: dict) -> None:
    mb = 1024 * 1024
    sizes = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in r.get("stage_bytes", {}).items())
    print(f"\nbrowser {r['variant']} ({sizes}): load {r.get('loadMs', float('nan')) / 1000:.1f} s, "
          f"threads {r.get('threads')}, cross-origin isolated {r.get('coi')}", flush=True)
    for i, cut in enumerate(r["cuts"]):
        stages = ", ".join(f"{s['name']} session {s['sessionMs'] / 1000:.1f} s + run {s['runMs'] / 1000:.1f} s "
                           f"(heap after: {s['heapBytes'] / mb:.0f} MiB)" for s in cut.get("stages", []))
        print(f"  cut {i} ({'cold' if i == 0 else 'warm'}): {cut['ms'] / 1000:.1f} s (inference "
              f"{cut['inferenceMs'] / 1000:.1f} s: {stages})", flush=True)
    print("  WASM heap: " + ", ".join(f"{k} {v / mb:.0f} MiB" if v else f"{k} ?" for k, v in r["memory"]))
    print(f"  Chromium RSS peak {r['chromium_rss_peak_mb'] / 1024:.2f} GB (all processes), largest process "
          f"{r['chromium_rss_largest_process_mb'] / 1024:.2f} GB")
    if r.get("error"):
        print(f"  FAILED: {r['error']}", flush=True)


def browser_main(args, out: Path) -> int:
    variants = args.variants.split(",")
    paths = {s: out / f"{args.config}.fp32.{s}.onnx" for s, _, _ in _stage_io(args.config)}
    report: dict = {"config": args.config, "size": args.size, "steps": {}}
    if not (args.reuse and all(p.exists() for p in paths.values())):
        report["steps"]["export"] = run_step("export stages fp32", step_export_stages, config_name=args.config,
                                             size=args.size, paths={k: str(v) for k, v in paths.items()})
    for variant in variants:
        targets = {s: str(out / f"{args.config}.{variant}.{s}.onnx") for s in paths}
        if variant != "fp32" and not (args.reuse and all(Path(t).exists() for t in targets.values())):
            report["steps"][f"variant:{variant}"] = run_step(
                f"make {variant} stages", step_variant_stages, config_name=args.config, variant=variant,
                paths={k: str(v) for k, v in paths.items()}, targets=targets)
    report["browser"] = browser_run(out, args.config, args.size, variants, args.threads, args.runs)
    (out / "browser_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(not r.get("error") for r in report["browser"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="rmbg-2.0")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--variants", default="fp32,fp16,int8w")
    parser.add_argument("--runs", type=int, default=2, help="onnxruntime CPU runs per variant")
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--torch", action="store_true", help="also time one torch forward")
    parser.add_argument("--reuse", action="store_true", help="keep graphs already in --out (only run them)")
    parser.add_argument("--browser", action="store_true",
                        help="browser stages cut in headless Chromium (WASM) instead of the CPU benchmark")
    parser.add_argument("--threads", type=int, default=2, help="--browser: onnxruntime-web WASM threads")
    args = parser.parse_args(argv)

    import numpy as np

    out = Path(args.out) / f"{args.config}-{args.size}"
    out.mkdir(parents=True, exist_ok=True)
    if args.browser:
        return browser_main(args, out)
    files = {v: out / f"{args.config}.{v}.onnx" for v in args.variants.split(",")}
    report: dict = {"config": args.config, "size": args.size, "steps": {}, "variants": {}}
    if args.torch:
        report["steps"]["torch_forward"] = run_step("torch forward", step_torch_forward, config_name=args.config,
                                                    size=args.size)
    if not (args.reuse and files["fp32"].exists()):
        report["steps"]["export"] = run_step("export fp32", step_export, config_name=args.config, size=args.size,
                                             path=str(files["fp32"]))
    if not files["fp32"].exists():
        print(json.dumps(report, indent=2))
        return 1
    for variant, path in files.items():
        if variant != "fp32" and not (args.reuse and path.exists()):
            report["steps"][f"variant:{variant}"] = run_step(f"make {variant}", step_variant, config_name=args.config,
                                                             variant=variant, fp32=str(files["fp32"]), path=str(path))
    reference = None
    for variant, path in files.items():
        if not path.exists():
            continue
        alpha_file = out / f"alpha.{variant}.npy"
        run = run_step(f"run {variant}", step_run, config_name=args.config, path=str(path), out=str(alpha_file),
                       runs=args.runs)
        entry = {"bytes": path.stat().st_size, "run": run, **graph_report(path)}
        if run["ok"]:
            alpha = np.load(alpha_file)
            if variant == "fp32":
                reference = alpha
            elif reference is not None:
                a, b = alpha >= 0.5, reference >= 0.5
                union = np.logical_or(a, b).sum()
                entry["vs_fp32"] = {"max_abs": float(np.abs(alpha - reference).max()),
                                    "iou": float(np.logical_and(a, b).sum() / union) if union else 1.0}
        report["variants"][variant] = entry
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{args.config} at {args.size}² (random weights), {out}")
    print(f"{'variant':<7} {'MB':>8} {'nodes':>6} {'session s':>9} {'run s':>12} {'RSS GB':>7} {'max abs':>9} "
          f"{'IoU':>7}")
    for variant, e in report["variants"].items():
        run, vs = e["run"], e.get("vs_fp32", {})
        runs = "/".join(f"{t:.1f}" for t in run.get("latency_s", [])) or "-"
        print(f"{variant:<7} {e['bytes'] / 1e6:>8.1f} {e['nodes']:>6} {run.get('session_s', float('nan')):>9.1f} "
              f"{runs:>12} {run['peak_rss_mb'] / 1024:>7.2f} {vs.get('max_abs', 0):>9.2e} {vs.get('iou', 1):>7.4f}")
    g = report["variants"]["fp32"]
    print(f"WebGPU checks (fp32): {'; '.join(g['webgpu_problems']) or 'pass'}; "
          f"Gather/Scatter nodes {g['gather_or_scatter']}")
    print("ops:", ", ".join(f"{k} {v}" for k, v in g["ops"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
