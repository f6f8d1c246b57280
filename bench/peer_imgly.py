"""The browser peer for `make bench-web`: @imgly/background-removal 1.7.0 served next to our bundle.

Installed on demand with `npm pack` (registry integrity checked by npm) into the cache; it needs
onnxruntime-web 1.21.0 (its peer dependency, mapped with an import map) and takes its models from
@imgly/background-removal-data 1.4.5 (the same pinned tarball our default model imports), whose
resources.json names them /models/small and /models/medium while 1.7.0 asks for /models/isnet_quint8 and
/models/isnet_fp16. `stage_peer` writes a folder with a resources.json in the 1.7.0 format that maps both.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

PEER_PACKAGE = "@imgly/background-removal@1.7.0"
PEER_ORT = "onnxruntime-web@1.21.0"
# imgly 1.7.0 model key → the 1.4.5 data package's key
MODEL_KEYS = {"/models/isnet_quint8": "/models/small", "/models/isnet_fp16": "/models/medium"}
ORT_FILES = ("ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")


class PeerUnavailable(RuntimeError):
    """npm could not provide the peer packages (offline?)."""


def _npm_pack(spec: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    name = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-") + "-" + spec.rsplit("@", 1)[1] + ".tgz"
    target = into / name
    if not target.exists():
        if not shutil.which("npm"):
            raise PeerUnavailable("npm is not installed (make setup installs it with the web dependencies)")
        done = subprocess.run(["npm", "pack", spec, "--pack-destination", str(into), "--silent"],
                              capture_output=True, text=True)
        if done.returncode != 0 or not target.exists():
            raise PeerUnavailable(f"npm pack {spec} failed: {done.stderr.strip()[-400:]}")
    return target


def _extract(tarball: Path, member_prefix: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(member_prefix):
                rel = member.name[len(member_prefix):] or Path(member.name).name
                out = target / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def stage_peer(target: Path, cache: Path, data_tarball: Path) -> dict:
    """Write the peer into `target` (served at some URL prefix): imgly/index.mjs, ort/…, data/ with a
    1.7.0-format resources.json. Returns the import map the page needs, relative to `target`."""
    imgly = _npm_pack(PEER_PACKAGE, cache)
    ort = _npm_pack(PEER_ORT, cache)
    _extract(imgly, "package/dist/index.mjs", target / "imgly")
    _extract(ort, "package/dist/", target / "ort")
    data = target / "data"
    _extract(data_tarball, "package/dist/", data)
    old = json.loads((data / "resources.json").read_text())
    resources = {}
    for new_key, old_key in MODEL_KEYS.items():
        entry = old[old_key]
        resources[new_key] = {"size": entry["size"], "mime": entry.get("mime", "application/octet-stream"),
                              "chunks": [{"name": c["hash"], "offsets": c["offsets"]} for c in entry["chunks"]]}
    for name in ORT_FILES:
        size = (target / "ort" / name).stat().st_size
        shutil.copyfile(target / "ort" / name, data / name)
        mime = "application/wasm" if name.endswith(".wasm") else "text/javascript"  # blob: imports check it
        resources[f"/onnxruntime-web/{name}"] = {"size": size, "mime": mime,
                                                 "chunks": [{"name": name, "offsets": [0, size]}]}
    (data / "resources.json").write_text(json.dumps(resources))
    return {"imports": {"onnxruntime-web": "ort/ort.min.mjs", "onnxruntime-web/webgpu": "ort/ort.webgpu.min.mjs"}}
