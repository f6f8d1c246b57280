"""The build manifest: what each pipeline stage read, did and wrote, so that unchanged stages are skipped."""
from __future__ import annotations

import gzip
import hashlib
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from common.contract import BUILD_SCHEMA
from common.files import atomic_write_bytes, sha256_file
from common.memory import release_memory, rss_mb

TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "numpy", "Pillow")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def gzip_size(path: Path) -> int:
    # mtime=0 keeps the number reproducible; level 9 is what a CDN's static gzip would use.
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def describe_file(path: Path) -> dict:
    return {"path": Path(path).name, "sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


class BuildManifest:
    """``build/<model>/manifest.json``; written atomically after every stage."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data.setdefault("stages", {})
        self.data["schema"] = BUILD_SCHEMA

    def save(self) -> None:
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())

    def stage(self, name: str, inputs: dict[str, Path], params: dict, outputs: dict[str, Path],
              run: Callable[[], dict | None], log: Callable[[str], None] = print) -> dict:
        """Run ``run`` unless a previous run had the same inputs, parameters and tools and its outputs are
        intact. ``run`` writes ``outputs`` and may return numbers to record."""
        input_hashes = {k: sha256_file(p) for k, p in inputs.items()}
        tools = tool_versions()
        key = hashlib.sha256(json.dumps([input_hashes, params, tools], sort_keys=True, default=str).encode()).hexdigest()
        previous = self.data["stages"].get(name)
        if previous and previous.get("key") == key and all(
                p.exists() and sha256_file(p) == previous["outputs"][k]["sha256"] for k, p in outputs.items()):
            log(f"[{name}] unchanged, skipped")
            return previous
        log(f"[{name}] running")
        start = time.perf_counter()
        result = run() or {}
        seconds = round(time.perf_counter() - start, 2)
        memory = rss_mb()  # peak_rss_mb rises in the stage that needed the memory
        release_memory()
        record = {"key": key, "inputs": input_hashes, "params": params, "tools": tools,
                  "outputs": {k: describe_file(p) for k, p in outputs.items()},
                  "seconds": seconds, "memory": {**memory, "rss_after_release_mb": rss_mb()["rss_mb"]},
                  "result": result}
        self.data["stages"][name] = record
        self.save()
        log(f"[{name}] done in {record['seconds']:.1f} s (process peak RSS {memory['peak_rss_mb'] / 1000:.1f} GB)")
        return record
