"""Build the static, CDN-ready browser bundle `dist/` from a pipeline build folder `build/<model>/`.

    python -m web_runtime.build_bundle --build build/isnet-imgly --out dist [--variants fp32,int8w]

The bundle's `manifest.json` copies preprocessing and output description from the build manifest (the single
source of truth): the JS runtime holds no model constants. Model variants are split into chunks named by their
sha256; the runtime verifies each chunk before use. A coded variant (its weights below 8 bits, a `.ccw`
container beside its ONNX, quantize/ccw.py) ships as that container's chunks, marked `coded`; the runtime
decodes them into the exact ONNX bytes the build gated and checks their sha256 before the session. The output
folder is replaced atomically.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import onnx

from common.contract import BUNDLE_SCHEMA
from common.files import sha256_file, sri
from common.manifest_schema import ManifestError, parse_bundle_manifest, to_json
from common.onnx_graph import has_quantized_activations, load_graph, runtime_session_config, webgpu_features
from quantize import ccw

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
DEMO = HERE / "demo"
ORT_PACKAGE = HERE / "node_modules" / "onnxruntime-web"
# The demo page's ZIP writer ("Download all", streamed): npm fflate's dependency-free ES module build.
ZIP_PACKAGE = HERE / "node_modules" / "fflate"
ZIP_MODULE = ("esm/browser.js", "fflate.js")  # in the package → in the bundle

MIB = 1024 * 1024
DEFAULT_CHUNK_BYTES = 20 * MIB  # CDN-friendly: below common per-object limits (e.g. 25 MiB)

# onnxruntime-web entry module and the wasm build it loads, per backend. Only these go into dist/.
ORT_FILES = {
    "wasm": ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"],
    "webgpu": ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"],
}
ORT_ENTRY = {"wasm": "ort.wasm.min.mjs", "webgpu": "ort.webgpu.min.mjs"}
RUNTIME_FILES = ["clearcut.js", "boot.js", "store.js", "version.js", "errors.js", "worker.js", "loader.js", "engine.js",
                 "engine_ort.js", "runners.js", "ccw.js", "probe.js", "cut.js", "compose.js", "imaging.js", "refine.js", "clearcut.d.ts",
                 "manifest.d.ts"]
PAGE_MODULES = ["clearcut.js", "boot.js", "store.js", "version.js", "errors.js", ZIP_MODULE[1]]  # the page's import graph (SRI in the demo)
REFINE_PARAMS = HERE / "refine.json"  # edge-refinement constants (single source; eval/refine.py reads it too)
DEMO_FILES = ["index.html", "demo.js", "batch.js", "demo.css"]

# Content-Security-Policy of the demo page. 'wasm-unsafe-eval' lets onnxruntime compile its wasm; workers and
# everything else come from our own origin only, and nothing can be sent anywhere else.
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; "
       "img-src 'self' blob: data:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")

CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_SHORT = "no-cache"  # always revalidated (ETag): the manifest and unhashed names must never go stale

# Every bundle file may be used by a page on another origin (a site loading the runtime and model from a CDN):
# CORS for its fetch()es, CORP cross-origin for loads under that page's COEP.
CROSS_ORIGIN_SHARING = {
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
CROSS_ORIGIN_ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",  # also needed on worker.js: a worker inherits nothing
    **CROSS_ORIGIN_SHARING,
    "X-Content-Type-Options": "nosniff",
}

# A version folder written by `clearcut publish` (web_runtime/publish.py): `<runtime version>-<content digest>`.
# Its name changes whenever any file in it does, so all of it is immutable but its entry points.
PUBLISHED_VERSION_RE = r"[^/]+-[0-9a-f]{12}"

MIME_TYPES = {
    "text/html": ["html"], "text/css": ["css"], "text/javascript": ["js", "mjs"],  # RFC 9239
    "application/json": ["json"], "application/wasm": ["wasm"], "text/plain": ["ts", "txt"],
    "image/png": ["png"], "image/jpeg": ["jpg", "jpeg"], "image/webp": ["webp"], "image/gif": ["gif"],
    "image/svg+xml": ["svg"],
}


class BundleError(RuntimeError):
    """The build folder or the npm packages cannot make a bundle."""


def _package_version(package: Path) -> str:
    pkg = package / "package.json"
    if not pkg.exists():
        raise BundleError(f"{package} missing: run `make setup-web` (npm ci --prefix web_runtime)")
    return json.loads(pkg.read_text())["version"]


def ort_version() -> str:
    return _package_version(ORT_PACKAGE)


def runtime_version() -> str:
    return json.loads((HERE / "package.json").read_text())["version"]


def split_variant(onnx_path: Path, chunks_dir: Path, chunk_bytes: int) -> list[dict]:
    """Write `onnx_path` as chunks named `<sha256>.bin`; return the chunk list in order."""
    chunks = []
    with onnx_path.open("rb") as f:
        while block := f.read(chunk_bytes):
            digest = hashlib.sha256(block).hexdigest()
            name = f"{digest}.bin"
            target = chunks_dir / name
            if not target.exists():
                target.write_bytes(block)
            chunks.append({"path": f"chunks/{name}", "sha256": digest, "bytes": len(block), "integrity": sri(block)})
    return chunks


def headers_file(ort_dir: str) -> str:
    """Netlify/Cloudflare Pages `_headers`. Matching rules merge, so each path gets exactly one Cache-Control."""
    iso = "".join(f"  {k}: {v}\n" for k, v in CROSS_ORIGIN_ISOLATION.items())
    short = ["/", "/index.html", "/manifest.json", "/*.js", "/*.css", "/*.d.ts"]
    return (
        f"/*\n{iso}"
        + "".join(f"{path}\n  Cache-Control: {CACHE_SHORT}\n" for path in short)
        + f"/\n  Content-Security-Policy: {CSP}\n"
        f"/index.html\n  Content-Security-Policy: {CSP}\n"
        f"/chunks/*\n  Cache-Control: {CACHE_IMMUTABLE}\n  Content-Type: application/octet-stream\n"
        f"/{ort_dir}/*\n  Cache-Control: {CACHE_IMMUTABLE}\n"
        f"/*.wasm\n  Content-Type: application/wasm\n"
    )


def _add_headers(cache: str, extra: dict[str, str] | None = None, indent: str = "    ") -> str:
    # nginx drops inherited add_header lines as soon as a location has its own: repeat all of them.
    lines = {**CROSS_ORIGIN_ISOLATION, "Cache-Control": cache, **(extra or {})}
    return "".join(f'{indent}add_header {k} "{v}" always;\n' for k, v in lines.items())


def nginx_locations(ort_dir: str) -> str:
    """The `location` blocks a CDN origin or `make serve` needs (include inside a `server {}`)."""
    page = {"Content-Security-Policy": CSP}
    version = f'"/{PUBLISHED_VERSION_RE}/'
    return (
        "# ClearCut bundle: cross-origin isolation (wasm threads), immutable hashed files, CSP on the page.\n"
        "# Folders written by `clearcut publish`: latest.json and each version's page and manifest revalidated,\n"
        "# the rest of a version folder immutable (its name is derived from its contents).\n"
        + 'location ~ "/latest\\.json$" {\n' + _add_headers(CACHE_SHORT) + "}\n"
        + f'location ~ {version}(index\\.html)?$" {{\n' + _add_headers(CACHE_SHORT, page) + "}\n"
        + f'location ~ {version}manifest\\.json$" {{\n' + _add_headers(CACHE_SHORT) + "}\n"
        + f'location ~ {version}" {{\n' + _add_headers(CACHE_IMMUTABLE) + "}\n"
        + "location ~ ^/(chunks|" + ort_dir.replace(".", r"\.") + r")/ {" + "\n"
        + _add_headers(CACHE_IMMUTABLE) + "}\n"
        + "location = / {\n" + _add_headers(CACHE_SHORT, page) + "}\n"
        + "location = /index.html {\n" + _add_headers(CACHE_SHORT, page) + "}\n"
        + "location / {\n" + _add_headers(CACHE_SHORT) + "}\n"
    )


def nginx_types() -> str:
    body = "".join(f"    {mime} {' '.join(exts)};\n" for mime, exts in MIME_TYPES.items())
    return "types {\n" + body + "}\ndefault_type application/octet-stream;\n"


def _checked_graph(build_dir: Path, entry: dict, manifest_path: Path) -> tuple[Path, onnx.ModelProto]:
    onnx_path = build_dir / entry["path"]
    if not onnx_path.exists():
        raise BundleError(f"{onnx_path} missing (listed in {manifest_path}); re-run the export")
    actual = sha256_file(onnx_path)
    if actual != entry["sha256"]:
        raise BundleError(f"{onnx_path}: sha256 {actual} differs from the build manifest's {entry['sha256']}")
    return onnx_path, load_graph(onnx_path)


def _container(build_dir: Path, build: dict, name: str, entry: dict, engines: bool) -> Path | None:
    """The `.ccw` container the build recorded for variant `name`, checked: its file's sha256 is the recorded
    one and it decodes (by its header) to the variant's ONNX sha256 and length. None for a plain variant. With
    ``engines`` (the bundle ships WebGPU) and engine graphs that passed their gate: the container that carries
    them too."""
    info = ((build.get("stages") or {}).get(f"variant:{name}", {}).get("result") or {}).get("container")
    if not info:
        return None
    if engines and _shipped_engines(entry) and entry.get("engines_container"):
        info = entry["engines_container"]
    path = build_dir / info["path"]
    if not path.is_file() or sha256_file(path) != info["sha256"]:
        raise BundleError(f"{path} is missing or differs from the sha256 the build recorded; re-run the export")
    try:
        onnx_sha, onnx_length, _, _ = ccw.read_header(path.read_bytes())
    except ccw.ContainerError as err:
        raise BundleError(f"{path}: {err}") from None
    if onnx_sha.hex() != entry["sha256"] or onnx_length != entry["bytes"]:
        raise BundleError(f"{path} decodes to {onnx_length} bytes, sha256 {onnx_sha.hex()}, not variant {name}'s "
                          f"{entry['bytes']} bytes, {entry['sha256']}; re-run the export")
    return path


def build_bundle(build_dir: Path, out_dir: Path, variants: list[str] | None = None,
                 backends: tuple[str, ...] = ("wasm", "webgpu"), chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 stages: bool = True, coded: bool = True) -> dict:
    """Write the bundle for `build_dir` into `out_dir` (atomically replaced); return its manifest.

    A coded variant ships as its `.ccw` container's chunks (`coded` in its entry) unless `coded` is False: it
    then ships as its decoded ONNX file like any other variant.

    A build variant exported as browser stages (graphs run one after another, one session at a time) ships
    as those stages unless `stages` is False: its bundle entry then lists `stages` in run order, each with
    its own chunks, sha256, input and output names, instead of one `chunks` list."""
    build_dir = Path(build_dir)
    manifest_path = build_dir / "manifest.json"
    if not manifest_path.exists():
        raise BundleError(f"{manifest_path} missing: run `clearcut export` (make export) first")
    build = json.loads(manifest_path.read_text())
    available = build.get("variants", {})
    # By default only variants that passed the pipeline's parity gate ship; an explicit list overrides.
    chosen = variants or [v for v, e in available.items() if (e.get("parity") or {}).get("passed", True)]
    if not chosen:
        raise BundleError(f"{manifest_path}: no variant passed the parity gate; name one with --variants to ship it anyway")
    unknown = [v for v in chosen if v not in available]
    if unknown:
        raise BundleError(f"{manifest_path}: no variant(s) {unknown}; the build has {sorted(available)}")
    if not 0 < chunk_bytes <= DEFAULT_CHUNK_BYTES:
        raise BundleError(f"chunk size must be in (0, {DEFAULT_CHUNK_BYTES}] bytes, got {chunk_bytes}")
    ort_ver = ort_version()
    ort_dir = f"ort-{ort_ver}"
    zip_ver = _package_version(ZIP_PACKAGE)

    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        files: dict[str, dict] = {}

        def record(rel: str) -> None:
            data = (tmp / rel).read_bytes()
            files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "integrity": sri(data)}

        (tmp / "chunks").mkdir()
        out_variants = {}
        for name in chosen:
            entry = available[name]
            if stages and entry.get("stages"):
                out_stages, features = [], []
                for stage in entry["stages"]:
                    onnx_path, graph = _checked_graph(build_dir, stage, manifest_path)
                    features += [f for f in webgpu_features(graph) if f not in features]
                    out_stages.append({
                        "name": stage["name"], "bytes": stage["bytes"], "sha256": stage["sha256"],
                        "inputs": stage["inputs"], "outputs": stage["outputs"],
                        "session_config": runtime_session_config(graph),
                        "chunks": split_variant(onnx_path, tmp / "chunks", chunk_bytes),
                    })
                out_variants[name] = {
                    "bytes": sum(s["bytes"] for s in out_stages), "gzip_bytes": None,
                    "parity": entry.get("stages_parity"), "cpu_latency_ms": entry.get("cpu_latency_ms"),
                    "backends": list(backends), "webgpu_features": features, "stages": out_stages,
                }
                continue
            onnx_path, graph = _checked_graph(build_dir, entry, manifest_path)
            container = _container(build_dir, build, name, entry, "webgpu" in backends) if coded else None
            shipped = container or onnx_path
            engines = _engine_entries(build_dir, entry, container) if "webgpu" in backends else {}
            out_variants[name] = {
                "bytes": entry["bytes"], "sha256": entry["sha256"], "gzip_bytes": entry.get("gzip_bytes"),
                "parity": entry.get("parity"), "cpu_latency_ms": entry.get("cpu_latency_ms"),
                # an int8 QDQ graph on WebGPU would run its QuantizeLinear nodes on the CPU: WebGPU only with a
                # WebGPU graph of its own
                "backends": [b for b in backends if b != "webgpu" or engines or not has_quantized_activations(graph)],
                "session_config": runtime_session_config(graph),
                "webgpu_features": webgpu_features(graph),
                "chunks": split_variant(shipped, tmp / "chunks", chunk_bytes),
            }
            if engines:
                out_variants[name]["engines"] = engines
            if container is not None:
                out_variants[name]["coded"] = {"format": "ccw1", "bytes": container.stat().st_size,
                                               "sha256": sha256_file(container)}

        (tmp / ort_dir).mkdir()
        ort_files = sorted({f for b in backends for f in ORT_FILES[b]})
        for f in ort_files:
            shutil.copyfile(ORT_PACKAGE / "dist" / f, tmp / ort_dir / f)
            record(f"{ort_dir}/{f}")
        for f in RUNTIME_FILES:
            shutil.copyfile(SRC / f, tmp / f)
            record(f)
        shutil.copyfile(ZIP_PACKAGE / ZIP_MODULE[0], tmp / ZIP_MODULE[1])
        record(ZIP_MODULE[1])
        for f in DEMO_FILES:
            shutil.copyfile(DEMO / f, tmp / f)
        (tmp / "_headers").write_text(headers_file(ort_dir))
        (tmp / "nginx.conf.snippet").write_text(nginx_types() + nginx_locations(ort_dir))

        manifest = {
            "schema": BUNDLE_SCHEMA,
            "model": build["model"],
            "preprocessing": build["preprocessing"],
            "output": build["output"],
            "refine": json.loads(REFINE_PARAMS.read_text()),
            "variants": out_variants,
            "default_variant": default_variant(out_variants, build["model"]["name"], available),
            "runtime": {
                "module": "clearcut.js", "worker": "worker.js",
                "ort": {b: f"{ort_dir}/{ORT_ENTRY[b]}" for b in backends},
                "ort_dir": ort_dir,
                "zip": ZIP_MODULE[1],
            },
            "files": files,
            "versions": {"clearcut-runtime": runtime_version(), "onnxruntime-web": ort_ver, "fflate": zip_ver,
                         "build_tools": build.get("tools", {})},
            "source": build.get("source", {}),
        }
        # Written from the parsed contract (common/manifest_schema.py): a field that does not fit fails here.
        contract = parse_bundle_manifest(manifest, f"bundle manifest of {manifest_path}")
        (tmp / "manifest.json").write_text(json.dumps(to_json(contract), indent=1) + "\n")
        _stamp_demo(tmp, files)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)

        # Atomic swap: readers see the old bundle or the new one, never a half-written folder.
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _shipped_engines(entry: dict) -> dict:
    """The build's engine graphs of a variant that passed their gate (placement included)."""
    return {engine: e for engine, e in (entry.get("engines") or {}).items() if e.get("passed")}


def _engine_entries(build_dir: Path, entry: dict, container: Path | None) -> dict:
    """The bundle manifest's `engines` of a variant: per engine whose graph passed the gate and travels in the
    variant's container, the graph's name in the container, sha256, length, session config and probe."""
    if container is None:
        return {}
    carried = set(ccw.graph_names(container.read_bytes()))
    out = {}
    for engine, e in _shipped_engines(entry).items():
        if e["graph"] not in carried:
            continue
        graph = load_graph(build_dir / e["path"])
        out[engine] = {"graph": e["graph"], "bytes": e["bytes"], "sha256": e["sha256"],
                       "session_config": e["session_config"], "webgpu_features": webgpu_features(graph),
                       "probe": e["probe"]}
    return out


def default_variant(variants: dict, model: str, build_variants: dict | None = None) -> str:
    """The first of the model's `bundle_default_order` (models/registry.py: why, with numbers) the bundle has
    whose gate is `clear` in the build (passed by more than the registry's measured margin, so not by luck on
    this machine), else the first of the order the bundle has; only variants that passed the parity gate get
    here unless named. ``build_variants``: the build manifest's entries (default: ``variants`` themselves)."""
    from models.registry import REGISTRY
    config = REGISTRY.get(model)
    order = [v for v in (config.bundle_default_order if config else ("int8", "int8w", "fp16", "fp32")) if v in variants]
    entries = build_variants if build_variants is not None else variants
    clear = [v for v in order if ((entries.get(v) or {}).get("gate") or {}).get("clear", True)]
    return next(iter(clear or order), next(iter(variants)))


def _stamp_demo(root: Path, files: dict) -> None:
    """Put the CSP and SRI hashes into the demo page (module scripts loaded from the page carry `integrity`)."""
    html = (root / "index.html").read_text()
    html = html.replace("{{CSP}}", CSP.replace("; frame-ancestors 'none'", ""))  # not allowed in <meta>
    for name in ("demo.js", "batch.js", "demo.css", *PAGE_MODULES):
        digest = files.get(name, {}).get("integrity")
        if digest is None and (root / name).exists():
            digest = sri((root / name).read_bytes())
        html = html.replace("{{SRI:" + name + "}}", digest or "")
    (root / "index.html").write_text(html)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="web_runtime.build_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--build", required=True, help="pipeline output folder, e.g. build/isnet-imgly")
    parser.add_argument("--out", default="dist")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all in the build)")
    parser.add_argument("--backends", default="wasm,webgpu", help="onnxruntime-web backends to ship")
    parser.add_argument("--chunk-mib", type=float, default=DEFAULT_CHUNK_BYTES / MIB)
    parser.add_argument("--single-graph", action="store_true",
                        help="ship the one-graph form of variants the build also has as browser stages")
    parser.add_argument("--plain", action="store_true",
                        help="ship coded variants as their decoded ONNX instead of their .ccw weight container")
    args = parser.parse_args(argv)
    backends = tuple(b for b in args.backends.split(",") if b)
    bad = [b for b in backends if b not in ORT_FILES]
    if bad or not backends:
        print(f"error: unknown backend(s) {bad}; choose from {sorted(ORT_FILES)}", file=sys.stderr)
        return 2
    try:
        manifest = build_bundle(Path(args.build), Path(args.out), [v for v in args.variants.split(",") if v] or None,
                                backends, int(args.chunk_mib * MIB), stages=not args.single_graph,
                                coded=not args.plain)
    except (BundleError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{args.out}: {manifest['model']['name']}, runtime+ort {total / MIB:.1f} MiB")
    width = max(map(len, manifest["variants"]), default=6)
    for name, v in manifest["variants"].items():
        parts = v.get("stages") or [v]
        staged = f" ({len(parts)} stages, run in sequence)" if "stages" in v else ""
        if "coded" in v:
            staged = f" ({v['coded']['bytes'] / MIB:.1f} MiB {v['coded']['format']} container, decoded in the worker)"
        print(f"  {name:<{width}} {v['bytes'] / MIB:8.1f} MiB in {sum(len(p['chunks']) for p in parts)} chunk(s){staged}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
