"""Hostile and unusual inputs: each gives a clear error or a correct cut, and the page keeps working."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from eval.images import sample_photos


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(size=(96, 64)) -> Image.Image:
    return Image.open(sample_photos()[0]).convert("RGB").resize(size)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _png_grey_streamed(width: int, height: int) -> bytes:
    """A valid width×height 8-bit grey PNG built row by row (a few hundred KB for 20000²)."""
    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _jpeg_with_sof(width: int, height: int) -> bytes:
    data = bytearray(_save(_photo((16, 16)), "JPEG"))
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    return _save(_photo((80, 40)), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo((40, 30)).convert("P"), Image.new("P", (40, 30), 3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_transparent() -> bytes:
    img = _photo((50, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _png16() -> bytes:
    grey = np.asarray(_photo((48, 32)).convert("L"), np.uint16) * 257
    return _save(Image.fromarray(grey.astype("<u2")), "PNG")


def _rgba_semi() -> bytes:
    img = _photo((60, 40)).convert("RGBA")
    img.putalpha(128)
    return _save(img, "PNG")


# name → (bytes factory, expected: "error:<code>" | (width, height) of a correct cut | "either")
CASES = {
    "zero bytes": (lambda: b"", "error:empty"),
    "truncated JPEG": (lambda: _save(_photo((200, 150)), "JPEG")[:700], "either"),
    "random bytes named .png": (lambda: os.urandom(4096), "error:unsupported-format"),
    "SVG": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
            "error:unsupported-format"),
    "HTML": (lambda: b"<!doctype html><p>not an image", "error:unsupported-format"),
    "plain text": (lambda: b"hello, world", "error:unsupported-format"),
    "PDF": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", "error:unsupported-format"),
    "TIFF": (lambda: _save(_photo(), "TIFF"), "error:unsupported-format"),
    "PNG signature only": (lambda: b"\x89PNG\r\n\x1a\n", "error:unsupported-format"),
    "animated GIF": (_animated_gif, (40, 30)),
    "16-bit PNG": (_png16, (48, 32)),
    "CMYK JPEG": (lambda: _save(_photo().convert("CMYK"), "JPEG"), (96, 64)),
    "grayscale JPEG": (lambda: _save(_photo().convert("L"), "JPEG"), (96, 64)),
    "palette PNG with transparency": (_palette_transparent, (50, 40)),
    "semi-transparent RGBA PNG": (_rgba_semi, (60, 40)),
    "EXIF-rotated JPEG": (_exif_rotated, (40, 80)),
    "progressive JPEG": (lambda: _save(_photo(), "JPEG", progressive=True), (96, 64)),
    "WebP": (lambda: _save(_photo(), "WEBP"), (96, 64)),
    "BMP": (lambda: _save(_photo(), "BMP"), (96, 64)),
    "1x1 PNG": (lambda: _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), (1, 1)),
    "very wide 4000x2": (lambda: _save(_photo((4000, 2)), "PNG"), (4000, 2)),
    "very tall 2x4000": (lambda: _save(_photo((2, 4000)), "PNG"), (2, 4000)),
    "20000x20000 PNG": (lambda: _png_grey_streamed(20000, 20000), "error:too-large"),
    "huge dimensions in a tiny PNG": (lambda: _png_header_only(1_000_000, 1_000_000), "error:too-large"),
    "huge dimensions in a tiny JPEG": (lambda: _jpeg_with_sof(60000, 60000), "error:too-large"),
}


@pytest.fixture(scope="module")
def loaded(browser, server):
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    from .conftest import Harness

    h = Harness(context, page, server.url)
    h.open()
    assert h.load("tiny", variant="fp16")["ok"]
    yield h
    context.close()


def test_enough_kinds():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(loaded, name):
    factory, expected = CASES[name]
    result = loaded.cut(factory(), output="cutout", format="raw")
    if isinstance(expected, str) and expected.startswith("error:"):
        assert not result["ok"], f"{name}: expected an error, got a cut"
        assert result["code"] == expected.split(":", 1)[1], result
        assert len(result["message"]) > 20
    elif expected == "either":
        assert result["ok"] or (result["code"] in ("decode", "unsupported-format") and result["message"]), result
    else:
        assert result["ok"], f"{name}: {result}"
        assert (result["width"], result["height"]) == expected
        assert result["rgba"].shape == (expected[1], expected[0], 4)
    # the same page still cuts a valid image
    after = loaded.cut(sample_photos()[1].read_bytes(), output="mask", format="png")
    assert after["ok"], after


def test_pixel_bound_is_configurable(loaded):
    loaded.page.evaluate("""async () => {
      const m = await import('/tiny/clearcut.js');
      window.smallCutter = await m.createCutter({ manifestUrl: '/tiny/manifest.json', variant: 'fp16', maxPixels: 1000 });
    }""")
    result = loaded.page.evaluate("""async () => {
      const c = new OffscreenCanvas(100, 100);
      c.getContext('2d').fillRect(0, 0, 100, 100);
      try { await window.smallCutter.cut(await c.convertToBlob()); return { ok: true }; }
      catch (e) { return { ok: false, code: e.code, message: e.message }; }
      finally { window.smallCutter.dispose(); }
    }""")
    assert result["code"] == "too-large" and "100×100" in result["message"], result


def test_other_input_types(loaded):
    """ImageData, ImageBitmap, <canvas>, <img> and a same-origin URL all cut; a cross-origin URL is refused."""
    result = loaded.page.evaluate("""async () => {
      const canvas = document.createElement('canvas');
      canvas.width = 30; canvas.height = 20;
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#c33'; ctx.fillRect(0, 0, 30, 20);
      const blob = await new Promise((r) => canvas.toBlob(r));
      const img = new Image();
      img.src = URL.createObjectURL(blob);
      const inputs = {
        imageData: ctx.getImageData(0, 0, 30, 20),
        bitmap: await createImageBitmap(canvas),
        canvas,
        img,
        url: '/photo.png',
        notAnImageUrl: '/harness.html',
      };
      const out = {};
      for (const [k, v] of Object.entries(inputs)) {
        try { const r = await window.cutter.cut(v, { format: 'raw' }); out[k] = [r.width, r.height]; }
        catch (e) { out[k] = e.code; }
      }
      try { await window.cutter.cut('https://example.com/a.png'); out.crossOrigin = 'cut'; }
      catch (e) { out.crossOrigin = e.code; }
      out.bitmapStillUsable = inputs.bitmap.width;
      return out;
    }""")
    assert result["imageData"] == [30, 20] and result["bitmap"] == [30, 20]
    assert result["canvas"] == [30, 20] and result["img"] == [30, 20]
    assert result["url"] == [512, 512]
    assert result["notAnImageUrl"] == "unsupported-format"
    assert result["crossOrigin"] == "options"
    assert result["bitmapStillUsable"] == 30
