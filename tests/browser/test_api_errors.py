"""The API rejects with a ClearCutError and a documented code where it used to leak a DOMException or a
parser message: aborts, empty canvases, a manifest URL that is not a bundle manifest."""
from __future__ import annotations

import json

import pytest

from eval.images import sample_photos

ABORT_CUT_JS = """async ([reason]) => {
  const blob = await (await fetch('/photo.png')).blob();
  const out = {};
  for (const when of ['before', 'during']) {
    const controller = new AbortController();
    if (when === 'before') controller.abort(...reason);
    const pending = window.cutter.cut(blob, { signal: controller.signal });
    if (when === 'during') setTimeout(() => controller.abort(...reason), 0);
    try { await pending; out[when] = { ok: true }; }
    catch (e) { out[when] = { name: e.name, code: e.code, message: e.message, isClearCut: e.constructor.name === 'ClearCutError' }; }
  }
  // the cutter still works after aborted cuts
  out.after = (await window.cutter.cut(blob, { format: 'raw' })).width;
  return out;
}"""


def test_aborted_cut_is_a_clearcut_error(harness):
    assert harness.load("tiny", variant="fp16")["ok"]
    result = harness.page.evaluate(ABORT_CUT_JS, [[]])
    for when in ("before", "during"):
        r = result[when]
        assert r.get("ok") or (r["name"] == "ClearCutError" and r["code"] == "aborted" and r["isClearCut"]), (when, r)
    assert not result["before"].get("ok"), "a cut with an already aborted signal must not run"
    assert result["after"] == 512


def test_abort_reason_of_the_caller_is_kept(harness):
    assert harness.load("tiny", variant="fp16")["ok"]
    result = harness.page.evaluate("""async () => {
      const blob = await (await fetch('/photo.png')).blob();
      const controller = new AbortController();
      controller.abort(new RangeError('user closed the dialog'));
      try { await window.cutter.cut(blob, { signal: controller.signal }); return { ok: true }; }
      catch (e) { return { name: e.name, message: e.message }; }
    }""")
    assert result == {"name": "RangeError", "message": "user closed the dialog"}


@pytest.mark.parametrize("kind", ["HTMLCanvasElement", "OffscreenCanvas"])
def test_empty_canvas_is_code_empty(harness, kind):
    assert harness.load("tiny", variant="fp16")["ok"]
    result = harness.page.evaluate("""async (kind) => {
      const canvas = kind === 'OffscreenCanvas' ? new OffscreenCanvas(0, 0) : document.createElement('canvas');
      if (kind !== 'OffscreenCanvas') { canvas.width = 0; canvas.height = 0; }
      try { await window.cutter.cut(canvas); return { ok: true }; }
      catch (e) { return { name: e.name, code: e.code, message: e.message }; }
    }""", kind)
    assert result["name"] == "ClearCutError" and result["code"] == "empty", result
    assert "0×0" in result["message"], result
    assert harness.cut(sample_photos()[0].read_bytes())["ok"], "the cutter still works"


def _load(harness, manifest_url: str) -> dict:
    return harness.page.evaluate("""async (url) => {
      const m = await import('/tiny/clearcut.js');
      try { await m.createCutter({ manifestUrl: url }); return { ok: true }; }
      catch (e) { return { name: e.name, code: e.code, message: e.message }; }
    }""", manifest_url)


def test_manifest_url_that_is_not_json(harness):
    result = _load(harness, "/harness.html")
    assert result["name"] == "ClearCutError" and result["code"] == "manifest", result
    assert f"{harness.base_url}/harness.html" in result["message"], "the message names the URL"
    assert "not a ClearCut bundle manifest" in result["message"] and "not JSON" in result["message"], result
    assert "JSON.parse" not in result["message"] and "Unexpected token" not in result["message"], result
    # an HTML page came back (what Vite's dev server sends for a path it does not have): the message says what to pass
    assert "pass baseUrl" in result["message"], result


@pytest.mark.parametrize("case", ["wrong schema", "no schema", "missing fields", "unknown weight coding"])
def test_manifest_of_the_wrong_shape(harness, web_root, case):
    manifest = json.loads((web_root / "tiny" / "manifest.json").read_text())
    if case == "wrong schema":
        manifest["schema"] = "clearcut.bundle/99"
    elif case == "no schema":
        manifest = {"hello": "world"}
    elif case == "unknown weight coding":
        manifest["variants"]["fp32"]["coded"] = {"format": "ccw9", "bytes": 1, "sha256": "0" * 64}
    else:
        del manifest["output"]["output_name"]
        del manifest["variants"]["fp32"]["chunks"]
    folder = web_root / "shapes" / case.replace(" ", "-")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    folder.parent.chmod(0o755)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "manifest.json").chmod(0o644)
    result = _load(harness, f"/shapes/{folder.name}/manifest.json")
    assert result["name"] == "ClearCutError" and result["code"] == "manifest", result
    assert f"/shapes/{folder.name}/manifest.json is not a ClearCut bundle manifest" in result["message"], result
    expected = {"wrong schema": "clearcut.bundle/99", "no schema": 'no "schema"',
                "missing fields": "output.input_name/output_name, variants.fp32.chunks",
                "unknown weight coding": 'variant fp32 is coded as "ccw9" and this runtime decodes "ccw1"'}[case]
    assert expected in result["message"], result


def test_cut_after_dispose_is_a_state_error(harness):
    """dispose() terminates the worker (there is no 'dispose' message); later calls reject with `state`."""
    assert harness.load("tiny", variant="fp16")["ok"]
    result = harness.page.evaluate("""async () => {
      window.cutter.dispose();
      window.cutter.dispose(); // twice is fine
      try { await window.cutter.cut(new ImageData(4, 4)); return { ok: true }; }
      catch (e) { return { name: e.name, code: e.code }; }
    }""")
    assert result == {"name": "ClearCutError", "code": "state"}
