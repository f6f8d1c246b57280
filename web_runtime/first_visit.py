"""What a first visit downloads: the bytes a page transfers before its first cut, with the CDN's compression.

A first visit fetches the runtime modules, onnxruntime-web's entry module, its glue module and its wasm for the
backend in use, and the chosen variant's model chunks (a coded variant: its ``.ccw`` container's chunks). Sizes on
the wire are what ``make publish`` stores: brotli where it saves ≥ 3 % (``publish.Compressor``, cached by sha256).
`make bench-web` checks this list against the requests Chromium really makes, and measures imgly's the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from common.files import sha256_file
from web_runtime.publish import BROTLI_QUALITY, Compressor, Item, listed_files, variant_chunks

DEMO_FILES = {"demo.js", "batch.js", "demo.css", "index.html"}  # the demo page, not the runtime
# onnxruntime-web files per backend, besides the entry module the manifest names (runtime.ort[backend])
ENGINE_FILES = {"wasm": ("ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
                "webgpu": ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")}


@dataclass
class Transfer:
    """Raw and on-the-wire bytes of a set of files, by part (runtime, engine, model)."""
    parts: dict[str, list[int]] = field(default_factory=dict)  # part → [raw bytes, wire bytes, files]

    def add(self, part: str, raw: int, wire: int) -> None:
        row = self.parts.setdefault(part, [0, 0, 0])
        row[0] += raw
        row[1] += wire
        row[2] += 1

    @property
    def raw(self) -> int:
        return sum(r[0] for r in self.parts.values())

    @property
    def wire(self) -> int:
        return sum(r[1] for r in self.parts.values())

    def line(self) -> str:
        return (f"{self.wire / 1e6:.2f} MB on the wire ({self.raw / 1e6:.2f} MB raw): "
                + ", ".join(f"{part} {w / 1e6:.2f} MB" for part, (_, w, _) in self.parts.items()))


def first_visit_files(manifest: dict, variant: str | None = None, backend: str = "wasm") -> dict[str, str]:
    """Bundle-relative path → part ("runtime", "engine", "model") of every file a first visit fetches."""
    variant = variant or manifest["default_variant"]
    runtime = manifest["runtime"]
    ort_dir = runtime["ort_dir"]
    files = {}
    demo = DEMO_FILES | {runtime.get("zip")}  # the ZIP writer is the demo's "Download all"
    for rel in manifest["files"]:
        path = PurePosixPath(rel)
        if len(path.parts) == 1 and path.suffix == ".js" and rel not in demo:
            files[rel] = "runtime"
    files[runtime["ort"][backend]] = "engine"
    for name in ENGINE_FILES[backend]:
        files[f"{ort_dir}/{name}"] = "engine"
    files.update({c["path"]: "model" for c in variant_chunks(manifest["variants"][variant])})
    files["manifest.json"] = "runtime"
    return files


def measure(root: Path, files: dict[str, str], quality: int = BROTLI_QUALITY) -> Transfer:
    """Raw and brotli (as `make publish` stores them) bytes of ``files`` under ``root``."""
    compressor = Compressor(quality)
    found = Transfer()
    for rel, part in files.items():
        path = Path(root) / rel
        size = path.stat().st_size
        # model files without a suffix (imgly's hash-named chunks) are compressed like our chunks/*.bin
        key = rel + ".bin" if part == "model" and not PurePosixPath(rel).suffix else rel
        wire, _ = compressor.size(Item(key, size, sha256_file(path), source=path))
        found.add(part, size, wire)
    return found


def first_visit(dist: Path, variant: str | None = None, backend: str = "wasm") -> Transfer:
    """The bundle in ``dist``: what a first visit with ``variant`` (default: the bundle's) transfers."""
    manifest = json.loads((Path(dist) / "manifest.json").read_text())
    files = first_visit_files(manifest, variant, backend)
    unknown = sorted(set(files) - set(listed_files(manifest)) - {"manifest.json"})
    if unknown:
        raise ValueError(f"{dist}: the manifest does not list {unknown}")
    return measure(dist, files)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m web_runtime.first_visit", description=__doc__.split("\n")[0])
    parser.add_argument("--dist", type=Path, default=Path("dist"))
    parser.add_argument("--backend", default="wasm", choices=sorted(ENGINE_FILES))
    args = parser.parse_args(argv)
    if not (args.dist / "manifest.json").is_file():
        print(f"first visit: no bundle in {args.dist} (`make bundle` writes one)", file=sys.stderr)
        return 0
    manifest = json.loads((args.dist / "manifest.json").read_text())
    print(f"First visit of {args.dist} ({manifest['model']['name']}, {args.backend}), with brotli as `make publish` "
          "stores it:")
    for variant in manifest["variants"]:
        mark = " (default)" if variant == manifest["default_variant"] else ""
        print(f"  {variant + mark:<18} {first_visit(args.dist, variant, args.backend).line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
