"""Browser benchmark (`make bench-web`): per variant, in one headless Chromium run, cold first cut (download from
the local nginx + session + inference) and warm cut, next to native onnxruntime on the same ONNX bytes and
to the peer @imgly/background-removal 1.7.0 (small, medium) on the same photo (bench/peer_imgly.py); then a
batch of photos, ours through `cutter.cutMany` and imgly's as a loop over `removeBackground`, in photos/min.

    python -m bench.web --dist dist [--build build/isnet-imgly] [--variants int8,fp32] [--repeats 3]
                                         [--peer small,medium | --peer ''] [--batch 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common.chromium import launch
from web_runtime.serve import NginxServer

# Each row lives in its own page (own browser context: a cold cache) and stays loaded; warm cuts then go
# round-robin over all rows, so that load from other processes drifts over every row alike.
OURS_LOAD_JS = """async ([variant, url]) => {
  const m = await import('/clearcut.js');
  window.photo = await (await fetch(url)).blob();
  const t0 = performance.now();
  window.cutter = await m.createCutter({ manifestUrl: '/manifest.json', variant });
  const loaded = performance.now();
  await window.cutter.cut(window.photo, { format: 'png' });
  const info = window.cutter.info;
  return { cold: performance.now() - t0, load: loaded - t0, threads: info.threads, coi: info.crossOriginIsolated };
}"""

OURS_CUT_JS = """async () => {
  const timing = {};
  const s = performance.now();
  await window.cutter.cut(window.photo, { format: 'png', timing });
  return { ms: performance.now() - s, timing };
}"""

PEER_LOAD_JS = """async ([model, url]) => {
  const { removeBackground } = await import('/_peer/imgly/index.mjs');
  window.photo = await (await fetch(url)).blob();
  window.peerCutOf = (photo) => removeBackground(photo, {
    publicPath: location.origin + '/_peer/data/', model, output: { format: 'image/png' } });
  window.peerCut = () => window.peerCutOf(window.photo);
  const t0 = performance.now();
  await window.peerCut();
  return { cold: performance.now() - t0, coi: self.crossOriginIsolated };
}"""

PEER_CUT_JS = """async () => {
  const s = performance.now();
  await window.peerCut();
  return { ms: performance.now() - s };
}"""

# A batch on a loaded page: ours through cutMany (one cutter, one photo at a time), imgly's as the loop its API
# allows (removeBackground per photo). Photos are fetched before the clock starts; every result is a PNG Blob.
BATCH_JS = """async ([kind, urls]) => {
  const photos = await Promise.all(urls.map(async (u) => (await fetch(u)).blob()));
  let ok = 0;
  const t0 = performance.now();
  if (kind === 'ours') {
    for await (const item of window.cutter.cutMany(photos, { format: 'png' })) ok += item.ok ? 1 : 0;
  } else {
    for (const photo of photos) { await window.peerCutOf(photo); ok++; }
  }
  return { ms: performance.now() - t0, ok };
}"""


def native_ms(onnx_path: Path, size: list[int], threads: int, repeats: int) -> float:
    """The same file in native onnxruntime (CPU), on the same input shape, for the browser/native ratio."""
    import numpy as np

    from eval.latency import cpu_latency_ms

    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    return cpu_latency_ms(onnx_path, x, runs=repeats, warmup=1, threads=threads)["median_ms"]


def node_wasm_ms(onnx_path: Path, size: list[int], threads: int, repeats: int, session_config: dict) -> float | None:
    """The same file in onnxruntime-web's WASM engine under Node (no browser): None when node is missing."""
    import shutil
    import subprocess
    if not shutil.which("node"):
        return None
    script = Path(__file__).resolve().parents[1] / "web_runtime" / "bench_node_wasm.mjs"
    done = subprocess.run(["node", str(script), str(Path(onnx_path).resolve()), str(size[0]), str(size[1]), str(threads), str(repeats),
                           json.dumps(session_config)], capture_output=True, text=True, cwd=script.parent)
    if done.returncode != 0:
        print(f"  node wasm run failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]


def _median_s(values: list[float]) -> float:
    return statistics.median(values) / 1000


def _upscaled(image: Path, megapixels: float) -> Path:
    import tempfile

    from PIL import Image
    with Image.open(image) as im:
        scale = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
        big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    out = Path(tempfile.mkdtemp(prefix="clearcut-bench-")) / f"{image.stem}-{megapixels:g}mp.jpg"
    big.save(out, quality=90)
    return out


def _batch_photos(folder: Path, count: int) -> list[str]:
    """`count` different photos (the sample photos, mirrored and cropped in turn) as JPEGs in `folder`; their names."""
    from PIL import Image, ImageOps

    from eval.images import sample_photos
    sources = sample_photos()
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as im:
            img = im.convert("RGB")
        if (i // len(sources)) % 2:
            img = ImageOps.mirror(img)
        trim = (i // (2 * len(sources))) * 16
        img = img.crop((trim, trim, img.width - trim, img.height - trim))
        names.append(f"{i:02d}.jpg")
        img.save(folder / names[-1], quality=90)
    return names


def _stage_pages(dist: Path, image: Path, peer: bool) -> str | None:
    """Write the bench pages (and the peer, if asked) into dist/_bench and dist/_peer; return why the peer
    could not be staged, or None."""
    bench = dist / "_bench"
    bench.mkdir(exist_ok=True)
    (bench / image.name).write_bytes(image.read_bytes())
    (bench / "index.html").write_text("<!doctype html><title>bench</title>")
    if not peer:
        return None
    from models.registry import get_model_config
    from models.weights import WeightsError, cache_dir, fetch
    from bench.peer_imgly import PeerUnavailable, stage_peer
    try:
        data = fetch(get_model_config("isnet-imgly").sources[0], progress=True)
        import_map = stage_peer(dist / "_peer", cache_dir() / "npm-peer", data)
    except (PeerUnavailable, WeightsError, OSError) as err:  # offline: the table still prints, without the peer
        return str(err)
    (dist / "_peer" / "index.html").write_text(
        '<!doctype html><title>peer</title><script type="importmap">'
        + json.dumps({"imports": {k: "/_peer/" + v for k, v in import_map["imports"].items()}}) + "</script>")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.web", description=__doc__.split("\n")[0])
    parser.add_argument("--dist", default="dist")
    parser.add_argument("--build", default="", help="build folder with the same ONNX files, for native timings")
    parser.add_argument("--variants", default="")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default="", help="photo to cut (default: scikit-image's astronaut.png)")
    parser.add_argument("--megapixels", type=float, default=0,
                        help="upscale the photo to about this many megapixels (JPEG) to time a camera-sized cut")
    parser.add_argument("--peer", default="small,medium",
                        help="@imgly/background-removal 1.7.0 models to time in the same run ('' to skip)")
    parser.add_argument("--batch", type=int, default=20,
                        help="photos in the batch timed on each loaded page (0 to skip)")
    args = parser.parse_args(argv)
    dist = Path(args.dist)
    manifest = json.loads((dist / "manifest.json").read_text())
    variants = [v for v in args.variants.split(",") if v] or list(manifest["variants"])
    peers = [m for m in args.peer.split(",") if m]
    image = Path(args.image) if args.image else None
    if image is None:
        from eval.images import sample_photos
        image = sample_photos()[0]
    if args.megapixels:
        image = _upscaled(image, args.megapixels)
    build = Path(args.build) if args.build else None
    build_manifest = json.loads((build / "manifest.json").read_text()) if build else None

    from playwright.sync_api import sync_playwright
    rows, peer_rows = [], []
    try:
        peer_problem = _stage_pages(dist, image, bool(peers))
        batch = [f"/_bench/batch/{n}" for n in _batch_photos(dist / "_bench" / "batch", args.batch)]
        with NginxServer(dist) as server, sync_playwright() as p:
            browser = launch(p)
            pages = []  # (kind, name, page, result)
            for variant in variants:
                page, fetched = _recording_page(browser)
                page.goto(server.url + "/_bench/index.html")
                r = page.evaluate(OURS_LOAD_JS, [variant, f"/_bench/{image.name}"])
                r.update(warm=[], inference=[], stages=[], fetched=sorted(fetched))
                pages.append(("ours", variant, page, r))
                print(f"  cold {variant}: {r['cold'] / 1000:.2f} s", file=sys.stderr, flush=True)
            for model in peers if not peer_problem else []:
                page, fetched = _recording_page(browser)
                page.goto(server.url + "/_peer/index.html")
                r = page.evaluate(PEER_LOAD_JS, [model, f"/_bench/{image.name}"])
                r.update(warm=[], fetched=sorted(fetched))
                pages.append(("peer", model, page, r))
                print(f"  cold imgly {model}: {r['cold'] / 1000:.2f} s", file=sys.stderr, flush=True)
            for round_ in range(args.repeats):
                for kind, name, page, r in pages:
                    one = page.evaluate(OURS_CUT_JS if kind == "ours" else PEER_CUT_JS)
                    r["warm"].append(one["ms"])
                    if kind == "ours":
                        r["inference"].append(one["timing"]["inferenceMs"])
                        r["stages"].append(one["timing"])
                print(f"  warm round {round_ + 1}/{args.repeats} done", file=sys.stderr, flush=True)
            for kind, name, page, r in pages if batch else []:
                r["batch"] = page.evaluate(BATCH_JS, [kind, batch])
                print(f"  batch {kind} {name}: {r['batch']['ms'] / 1000:.1f} s", file=sys.stderr, flush=True)
            browser.close()
        first_visits = _first_visits(dist, pages)  # before the peer's folder goes
        for kind, name, _, r in pages:
            if kind == "peer":
                peer_rows.append((name, r))
                continue
            native = node = None
            if build_manifest and name in build_manifest["variants"]:
                path = build / build_manifest["variants"][name]["path"]
                size, threads = manifest["preprocessing"]["input_size"], r["threads"] or 1
                native = native_ms(path, size, threads, args.repeats)
                node = node_wasm_ms(path, size, threads, args.repeats, manifest["variants"][name].get("session_config", {}))
            entry = manifest["variants"][name]
            rows.append((name, (entry.get("coded") or entry)["bytes"], r, native, node))  # model bytes downloaded
    finally:
        import shutil
        shutil.rmtree(dist / "_bench", ignore_errors=True)
        shutil.rmtree(dist / "_peer", ignore_errors=True)

    print(f"ClearCut {manifest['model']['name']} in headless Chromium, {image.name}, "
          f"threads={rows[0][2]['threads'] if rows else '?'}, cross-origin isolated={rows[0][2]['coi'] if rows else '?'}")
    peer_warm = {m: _median_s(r["warm"]) for m, r in peer_rows}
    ratio_heads = "".join(f"{'/imgly ' + m:>14}" for m in peer_warm)
    print(f"{'variant':<14}{'MiB':>8}{'cold s':>9}{'warm s':>9}{'infer s':>9}{'native s':>10}{'browser/native':>16}"
          f"{'node-wasm s':>13}{'browser/wasm':>14}" + ratio_heads)
    for variant, size, r, native, node in rows:
        warm = _median_s(r["warm"])
        infer = _median_s(r["inference"])
        ratio = f"{infer * 1000 / native:.2f}" if native else "-"
        nat = f"{native / 1000:.2f}" if native else "-"
        wasm = f"{node / 1000:.2f}" if node else "-"
        wasm_ratio = f"{infer * 1000 / node:.2f}" if node else "-"
        mark = "*" if variant == manifest["default_variant"] else ""
        versus = "".join(f"{warm / w:14.2f}" for w in peer_warm.values())
        print(f"{variant + mark:<14}{size / 2**20:8.1f}{r['cold'] / 1000:9.2f}{warm:9.2f}{infer:9.2f}{nat:>10}{ratio:>16}"
              f"{wasm:>13}{wasm_ratio:>14}" + versus)
    print("where a warm cut's time goes (ms, median): "
          + "; ".join(f"{v}: " + ", ".join(f"{k[:-2]} {statistics.median(t[k] for t in r['stages']):.0f}"
                                         for k in ("decodeMs", "preprocessMs", "inferenceMs", "postprocessMs", "encodeMs"))
                      for v, _, r, _, _ in rows))
    for model, r in peer_rows:
        print(f"{'imgly ' + model:<14}{'':>8}{r['cold'] / 1000:9.2f}{peer_warm[model]:9.2f}")
    print("* default variant. warm = a whole cut (decode, resize, inference, mask, PNG encode) with the session "
          "loaded; infer = session.run only; node-wasm: the same file in onnxruntime-web's WASM engine under Node, so "
          "browser/wasm is what the browser adds and node-wasm/native what WASM SIMD costs against native kernels; "
          "last columns: our warm / imgly's warm in the same run.")
    if batch:
        print(f"batch of {len(batch)} photos (one page each, loaded and warm; ours: cutter.cutMany, imgly: a loop over "
              "removeBackground), PNG out:")
        for kind, name, _, r in pages:
            b = r["batch"]
            label = name + ("*" if name == manifest["default_variant"] else "") if kind == "ours" else f"imgly {name}"
            print(f"  {label:<14}{60000 * b['ok'] / b['ms']:8.1f} photos/min  ({b['ok']}/{len(batch)} cut in {b['ms'] / 1000:.1f} s)")
    ours_cold = {v: r["cold"] for v, _, r, _, _ in rows}
    if ours_cold and peer_rows:
        default = manifest["default_variant"] if manifest["default_variant"] in ours_cold else next(iter(ours_cold))
        load = next(r["load"] for v, _, r, _, _ in rows if v == default)
        print(f"cold first cut (createCutter/first removeBackground → first PNG, fresh context): ours {default} "
              f"{ours_cold[default] / 1000:.2f} s (cutter ready {load / 1000:.2f} s + cut {(ours_cold[default] - load) / 1000:.2f} s) = "
              + ", ".join(f"{ours_cold[default] / r['cold']:.2f}× imgly {m}'s" for m, r in peer_rows))
    if first_visits:
        print("first visit (every file the page fetched until its first cut, with brotli as `make publish` stores "
              "it; imgly's files compressed the same way):")
        for label, transfer in first_visits.items():
            print(f"  {label:<16}{transfer.line()}")
    if peers and peer_problem:
        print(f"peer (@imgly/background-removal 1.7.0) not measured: {peer_problem}")
    return 0


def _recording_page(browser):
    """A fresh context (empty cache) and page, and the set its requests' URL paths are collected into."""
    from urllib.parse import urlparse
    context = browser.new_context(bypass_csp=True)
    fetched: set[str] = set()
    context.on("request", lambda request: fetched.add(urlparse(request.url).path)
               if request.url.startswith("http") else None)
    return context.new_page(), fetched


def _first_visits(dist: Path, pages) -> dict:
    """Label → first_visit.Transfer for every page: ours from the bundle's first-visit list (checked against what
    the page fetched), imgly's from the files its page fetched, split into engine (onnxruntime), model, runtime."""
    from web_runtime.first_visit import first_visit, first_visit_files, measure
    manifest = json.loads((dist / "manifest.json").read_text())
    found = {}
    for kind, name, _, r in pages:
        fetched = [path.lstrip("/") for path in r["fetched"]]
        if kind == "ours":
            files = first_visit_files(manifest, name)
            got = {p for p in fetched if not p.startswith("_bench/")}
            if got != set(files):
                print(f"  note: {name}'s first visit fetched {sorted(got ^ set(files))[:4]} beyond/short of the bundle's "
                      "first-visit list", file=sys.stderr)
            found[name + ("*" if name == manifest["default_variant"] else "")] = first_visit(dist, name)
        else:
            def part(path: str) -> str:
                leaf = Path(path).name
                if leaf.startswith("ort"):
                    return "engine"
                return "model" if path.startswith("_peer/data/") and not Path(path).suffix else "runtime"
            files = {p: part(p) for p in fetched if p.startswith("_peer/") and not p.endswith(".html")}
            found[f"imgly {name}"] = measure(dist, files)
    return found


if __name__ == "__main__":
    sys.exit(main())
