"""The first-visit byte count (web_runtime/first_visit.py, printed by `make bench-web`) counts exactly the files
Chromium fetches for a first cut: no fewer (the number would flatter us) and no more."""
import json
from urllib.parse import urlparse

from eval.images import sample_photos
from web_runtime.first_visit import first_visit, first_visit_files


def test_first_visit_counts_what_chromium_fetches(harness, web_root):
    manifest = json.loads((web_root / "tiny" / "manifest.json").read_text())
    variant = manifest["default_variant"]
    assert harness.load("tiny", variant=variant, backend="wasm")["ok"]
    assert harness.cut(sample_photos()[0].read_bytes())["ok"]
    fetched = {urlparse(r.url).path.removeprefix("/tiny/") for r in harness.network_requests()
               if urlparse(r.url).path.startswith("/tiny/")}
    assert fetched == set(first_visit_files(manifest, variant, "wasm"))

    transfer = first_visit(web_root / "tiny", variant)
    assert set(transfer.parts) == {"runtime", "engine", "model"}
    assert 0 < transfer.wire < transfer.raw  # brotli shrinks the wasm and the JS at least
    chunks = manifest["variants"][variant]["chunks"]
    assert transfer.parts["model"][0] == sum(c["bytes"] for c in chunks)
