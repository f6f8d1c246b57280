"""Privacy (no request after load, no image bytes in any request) and model integrity (hash-verified chunks,
Cache API on reload)."""
from __future__ import annotations

from eval.images import sample_photos

CHUNKS = "/chunks/"


def _photos() -> list[bytes]:
    return [p.read_bytes() for p in sample_photos()[:4]]


def test_no_requests_after_load_and_no_image_bytes(harness):
    info = harness.load("tiny")
    assert info["ok"], info
    before = len(harness.network_requests())
    photos = _photos()
    for data in photos:
        for output in ("cutout", "mask", "color"):
            result = harness.cut(data, output=output, format="png")
            assert result["ok"] and result["type"] == "image/png", result
    after = harness.network_requests()[before:]
    assert after == [], f"cutting made network requests: {[r.url for r in after]}"
    for request in harness.network_requests():
        assert request.method == "GET", f"{request.method} {request.url}"
        assert request.post_data_buffer is None, f"{request.url} carries a body"
        assert len(request.url) < 300, f"suspiciously long URL {request.url[:80]}…"
        for data in photos:
            assert data[:64].hex() not in request.url


def test_progress_reports_download(harness):
    info = harness.load("tiny", variant="fp32")
    assert info["ok"], info
    events = harness.page.evaluate("window.progressEvents")
    downloads = [e for e in events if e["phase"] == "download"]
    assert downloads and downloads[-1]["loaded"] == downloads[-1]["total"] > 1_000_000
    assert any(e["phase"] == "session" for e in events)
    harness.page.wait_for_function("window.progressEvents.some((e) => e.phase === 'warmup' && e.loaded === 1)")
    events = harness.page.evaluate("window.progressEvents")
    assert events[-1] == {"type": "progress", "phase": "warmup", "loaded": 1, "total": 1}  # no cut asked: warmed up (after createCutter resolved: test_batch.py)


def test_flipped_byte_is_refused_and_never_cached(harness):
    result = harness.load("tampered", variant="fp32")
    assert not result["ok"]
    assert result["code"] == "integrity", result
    assert "integrity check" in result["message"] and "not used or cached" in result["message"]
    cached = harness.page.evaluate("""async () => {
      const cache = await caches.open('clearcut-chunks-v1');
      return (await cache.keys()).map((r) => r.url);
    }""")
    tampered = [u for u in cached if "/tampered/" in u]
    manifest = harness.page.evaluate("fetch('/tampered/manifest.json').then((r) => r.json())")
    bad_chunk = manifest["variants"]["fp32"]["chunks"][1]["path"]
    assert not any(u.endswith(bad_chunk) for u in tampered), "a tampered chunk was cached"


def test_truncated_chunk_is_refused(harness):
    result = harness.load("truncated", variant="fp32")
    assert not result["ok"]
    assert result["code"] == "network" and "truncated" in result["message"], result


def test_reload_fetches_no_model_bytes(harness):
    assert harness.load("tiny", variant="fp32")["ok"]
    first = [r.url for r in harness.network_requests() if CHUNKS in r.url]
    assert len(first) >= 2, "the tiny model should come in several chunks"
    harness.page.reload()
    mark = len(harness.network_requests())
    info = harness.load("tiny", variant="fp32")
    assert info["ok"], info
    again = [r.url for r in harness.network_requests()[mark:] if CHUNKS in r.url]
    assert again == [], f"model chunks fetched again after reload: {again}"
    events = harness.page.evaluate("window.progressEvents")
    assert all(e.get("fromCache", True) for e in events if e["phase"] == "download")
    photo = sample_photos()[0].read_bytes()
    assert harness.cut(photo)["ok"]


def test_abort_model_load(harness):
    result = harness.page.evaluate("""async () => {
      const m = await import('/tiny/clearcut.js');
      const controller = new AbortController();
      const pending = m.createCutter({ manifestUrl: '/tiny/manifest.json', variant: 'fp16', signal: controller.signal });
      controller.abort();
      try { await pending; return { ok: true }; } catch (e) { return { ok: false, code: e.code, name: e.name, message: e.message }; }
    }""")
    assert not result["ok"], result
    assert result["name"] == "ClearCutError" and result["code"] == "aborted", result  # not a bare DOMException
