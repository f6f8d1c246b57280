"""Many photos: the demo page's batch (a folder of 20 with a corrupt and a too-large one, zip, memory, cancel),
`cutter.cutMany` (per-item errors, abort, progress) and the cold start (no warm-up run ahead of a waiting cut)."""
from __future__ import annotations

import base64
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.images import sample_photos

from .test_bad_inputs import _png_header_only

GOOD = 18


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """photos/ with 18 small photos (PNG and JPEG, in a subfolder too), a corrupt .jpg, a .png whose header
    says 1 000 000² pixels, and a text file the folder picker skips."""
    root = tmp_path_factory.mktemp("batch") / "photos"
    (root / "more").mkdir(parents=True)
    sources = [Image.open(p).convert("RGB") for p in sample_photos()]
    names = []
    for i in range(GOOD):
        img = sources[i % len(sources)]
        w, h = 72 + 9 * i, 60 + 5 * (i % 7)
        left = (i * 13) % max(1, img.width - w * 2)
        crop = img.crop((left, 0, left + w * 2, h * 2)).resize((w, h))
        name = f"{'more/' if i % 3 == 2 else ''}photo{i:02d}.{'jpg' if i % 2 else 'png'}"
        crop.save(root / name, quality=90)
        names.append(name)
    (root / "corrupt.jpg").write_bytes(os.urandom(3000))
    (root / "huge.png").write_bytes(_png_header_only(1_000_000, 1_000_000))
    (root / "notes.txt").write_text("not an image")
    return root, names


@pytest.fixture()
def demo(browser, server):
    context = browser.new_context(accept_downloads=True)  # the page's real CSP: no bypass
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/tiny/index.html?variant=fp32")
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    yield page, errors
    context.close()


# After each photo of the batch is listed as done or failed: the worker's wasm memory.
WATCH_MEMORY_JS = """() => {
  window.memorySamples = [];
  const list = document.getElementById('batch-list');
  let seen = 0;
  new MutationObserver(async () => {
    const n = list.querySelectorAll('li[data-status=done], li[data-status=error]').length;
    if (n > seen) { seen = n; window.memorySamples.push(await window.clearcutDemo.cutter.memory()); }
  }).observe(list, { subtree: true, attributes: true, attributeFilter: ['data-status'] });
}"""

ROWS_JS = """() => [...document.querySelectorAll('#batch-list li')].map((li) => ({
  name: li.querySelector('.name').textContent, status: li.dataset.status, title: li.title }))"""


def _rows(page) -> list[dict]:
    return page.evaluate(ROWS_JS)


def _download_zip(page) -> zipfile.ZipFile:
    with page.expect_download() as info:
        page.click("#download-all")
    return zipfile.ZipFile(io.BytesIO(open(info.value.path(), "rb").read()))


SINGLE_PNG_JS = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const blob = await window.cutter.cut(new Blob([bytes]), { output: 'cutout', format: 'png' });
  const out = new Uint8Array(await blob.arrayBuffer());
  let s = '';
  for (let i = 0; i < out.length; i += 0x8000) s += String.fromCharCode.apply(null, out.subarray(i, i + 0x8000));
  return btoa(s);
}"""


def _rows_open_their_results(page, names) -> None:
    """The page as a user sees it after a batch: the before/after view is not an earlier photo's, a row's size
    label does not sit on its progress bar, and a finished row opens its photo and cutout with a download link."""
    assert page.get_attribute("#before", "src") is None and page.get_attribute("#after", "src") is None
    assert page.is_hidden("#download")
    row = page.locator("#batch-list li[data-status=done]").first
    bar, note = row.locator("progress").bounding_box(), row.locator(".note").bounding_box()
    assert bar["x"] + bar["width"] <= note["x"] + 0.5, (bar, note)
    name = row.locator(".name").text_content().split("/")[-1]
    row.click()
    # a function, not an expression: the demo's CSP has no 'unsafe-eval', and Playwright evals expressions it polls
    page.wait_for_function("() => ['before', 'after'].every((id) => document.getElementById(id).complete "
                           "&& document.getElementById(id).naturalWidth > 0)")
    assert row.get_attribute("aria-current") == "true"
    assert page.get_attribute("#download", "download") == f"{name.rsplit('.', 1)[0]}.png" and page.is_visible("#download")
    natural = page.evaluate("[document.getElementById('before').naturalWidth, document.getElementById('after').naturalWidth]")
    assert natural[0] == natural[1] > 0, natural
    page.screenshot(path=str(Path(tempfile.gettempdir()) / "clearcut-batch-page.png"), full_page=True)


def test_batch_page_cuts_a_folder_into_one_zip(demo, photo_folder, harness):
    page, errors = demo
    root, names = photo_folder
    page.evaluate(WATCH_MEMORY_JS)
    page.set_input_files("#folder", str(root))
    page.wait_for_selector("body[data-batch=done]", timeout=120_000)

    rows = _rows(page)
    assert len(rows) == GOOD + 2, rows  # notes.txt is not an image: not queued
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status.get("done", [])) == GOOD and len(by_status.get("error", [])) == 2, rows
    failed = {r["name"].split("/")[-1]: r["title"] for r in by_status["error"]}
    assert failed["huge.png"].startswith("too-large:"), failed
    assert failed["corrupt.jpg"].startswith("unsupported-format:"), failed
    assert "18 cut, 2 failed" in page.text_content("#batch-message")
    assert page.get_attribute("body", "data-state") == "ready"  # a failed photo is no page error

    _rows_open_their_results(page, names)

    archive = _download_zip(page)
    expected = sorted(f"photos/{n.rsplit('.', 1)[0]}.png" for n in names)
    assert sorted(archive.namelist()) == expected
    assert archive.testzip() is None
    size = sum(i.file_size for i in archive.infolist())
    print(f"zip: {len(archive.infolist())} PNGs, {size} bytes stored")

    # the same photos cut one at a time by a cutter of their own: the same pixels
    assert harness.load("tiny", variant="fp32")["ok"]
    for name in names:
        single = Image.open(io.BytesIO(base64.b64decode(harness.page.evaluate(SINGLE_PNG_JS, base64.b64encode((root / name).read_bytes()).decode()))))
        zipped = Image.open(io.BytesIO(archive.read(f"photos/{name.rsplit('.', 1)[0]}.png")))
        assert zipped.mode == "RGBA" and zipped.size == single.size == Image.open(root / name).size, name
        assert np.array_equal(np.asarray(zipped), np.asarray(single)), f"{name}: the batch's cutout differs from a single cut"

    samples = page.evaluate("window.memorySamples")
    assert len(samples) == GOOD + 2, samples
    first, last = max(samples[:3]), max(samples[-3:])
    print(f"wasm memory over the batch: first {samples[0]}, after 3: {first}, last 3: {last}")
    assert last <= first * 1.10, f"the worker's memory grew over the batch: {samples}"
    assert errors == [], errors


def test_cancel_stops_after_the_current_photo(demo, photo_folder):
    page, errors = demo
    root, _ = photo_folder
    # Cancel as soon as the third photo is listed as cut
    page.evaluate("""() => new MutationObserver((_, observer) => {
      if (document.querySelectorAll('#batch-list li[data-status=done]').length >= 3) {
        observer.disconnect();
        document.getElementById('cancel').click();
      }
    }).observe(document.getElementById('batch-list'), { subtree: true, attributes: true })""")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg") and p.name not in ("huge.png", "corrupt.jpg"))
    page.set_input_files("#file", [str(p) for p in files])
    page.wait_for_selector("body[data-batch=cancelled]", timeout=120_000)
    rows = _rows(page)
    statuses = [r["status"] for r in rows]
    assert statuses.count("done") == 3 and statuses.count("error") == 0, statuses
    assert statuses.count("skipped") == len(files) - 3 and "cutting" not in statuses, statuses
    assert "cancelled" in page.text_content("#batch-message")
    assert page.get_attribute("body", "data-state") == "ready"
    assert page.is_disabled("#cancel") and not page.is_disabled("#file")
    assert len(_download_zip(page).namelist()) == 3

    # the cutter still cuts: one photo on the before/after view
    page.set_input_files("#file", str(files[0]))
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert errors == [], errors


CUT_MANY_JS = """async ([good, abortAfter]) => {
  const bytes = Uint8Array.from(atob(good), (c) => c.charCodeAt(0));
  const inputs = [new File([bytes], 'a.png'), new File([new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])], 'bad.png'),
                  new Blob([bytes]), new File([bytes], 'd.png'), new File([bytes], 'e.png')];
  const controller = new AbortController();
  const progress = [];
  const items = [];
  for await (const item of window.cutter.cutMany(inputs, { signal: controller.signal, format: 'png',
      onProgress: (p) => progress.push(p) })) {
    items.push({ index: item.index, name: item.name, ok: item.ok, type: item.result?.type,
                 code: item.error?.code, isError: item.error instanceof Error });
    if (items.length === abortAfter) controller.abort();
  }
  const after = await window.cutter.cut(inputs[0]);
  return { items, progress, after: after.type };
}"""


def test_cut_many_yields_each_result_and_error_and_stops_on_abort(harness, photo_folder):
    assert harness.load("tiny", variant="fp16")["ok"]
    root, names = photo_folder
    good = base64.b64encode((root / names[0]).read_bytes()).decode()

    every = harness.page.evaluate(CUT_MANY_JS, [good, 0])
    assert [(i["index"], i["name"], i["ok"]) for i in every["items"]] == [
        (0, "a.png", True), (1, "bad.png", False), (2, "image-3", True), (3, "d.png", True), (4, "e.png", True)]
    assert every["items"][1]["code"] == "unsupported-format" and every["items"][1]["isError"]
    assert all(i["type"] == "image/png" for i in every["items"] if i["ok"])
    steps = [(p["index"], p["step"]) for p in every["progress"]]
    assert steps[:6] == [(0, "start"), (0, "decode"), (0, "inference"), (0, "mask"), (0, "encode"), (0, "done")], steps
    assert (1, "error") in steps
    last = every["progress"][-1]
    assert last == {**last, "completed": 5, "failed": 1, "total": 5, "overall": 1, "step": "done"}, last

    stopped = harness.page.evaluate(CUT_MANY_JS, [good, 2])
    assert [i["index"] for i in stopped["items"]] == [0, 1], "the batch should stop after the photo being cut"
    assert stopped["after"] == "image/png", "the cutter still cuts after an aborted batch"


COLD_JS = """async ([cutAtOnce, warmup]) => {
  const m = await import('/tiny/clearcut.js');
  const photo = await (await fetch('/photo.png')).blob();
  const events = [];
  const cutter = await m.createCutter({ manifestUrl: '/tiny/manifest.json', variant: 'fp32', warmup,
    onProgress: (p) => events.push(`${p.phase}:${p.loaded}`) });
  const log = (what) => events.push(what);
  if (!cutAtOnce) {
    // no cut asked: the warm-up runs by itself, after createCutter resolved
    log('resolved');
    const deadline = performance.now() + 10000;
    while (!events.includes('warmup:1') && warmup !== false && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 200));
  }
  log('cut asked');
  await cutter.cut(photo);
  log('cut done');
  await new Promise((r) => setTimeout(r, 300));  // a warm-up that would run late shows here
  cutter.dispose();
  return events.filter((e) => !e.startsWith('download') && !e.startsWith('session'));
}"""


@pytest.mark.parametrize("case, expected", [
    ("cut at once", ["cut asked", "cut done"]),  # that cut is the warm-up: no run before it, none after
    ("cut later", ["resolved", "warmup:0", "warmup:1", "cut asked", "cut done"]),
    ("warmup off", ["resolved", "cut asked", "cut done"]),
])
def test_cold_start_runs_no_warm_up_ahead_of_a_waiting_cut(harness, case, expected):
    events = harness.page.evaluate(COLD_JS, [case == "cut at once", False if case == "warmup off" else None])
    assert events == expected


def test_dropped_files_start_a_batch(demo, photo_folder):
    """Files dropped on the page (a DataTransfer, as a drag from the desktop gives) go through the same batch."""
    page, errors = demo
    root, names = photo_folder
    photos = [base64.b64encode((root / n).read_bytes()).decode() for n in names[:3]]
    page.evaluate("""(photos) => {
      const transfer = new DataTransfer();
      photos.forEach((b64, i) => transfer.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))],
        `dropped${i}.png`, { type: 'image/png' })));
      document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", photos)
    page.wait_for_selector("body[data-batch=done]", timeout=60_000)
    assert [(r["name"], r["status"]) for r in _rows(page)] == [(f"dropped{i}.png", "done") for i in range(3)]
    assert sorted(_download_zip(page).namelist()) == [f"dropped{i}.png" for i in range(3)]
    assert errors == [], errors
