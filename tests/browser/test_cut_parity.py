"""`clearcut cut --bundle` and the browser's `cut` give the same mask for the same bundle and photo, and the
same cutout alpha for a photo that is already partly transparent."""
from __future__ import annotations

import numpy as np
from PIL import Image

from eval.images import sample_photos
from export.cli import main as clearcut

PHOTOS = [p for p in sample_photos() if p.name in ("astronaut.png", "chelsea.png")]


def _cli(photos, out, bundle, output: str, capsys) -> str:
    args = ["cut", *map(str, photos), "-o", str(out), "--bundle", str(bundle), "--output", output, "--refine", "off"]
    assert clearcut(args) == 0
    return capsys.readouterr().err


def _mean_abs(browser: np.ndarray, cli: np.ndarray, name: str) -> float:
    assert cli.shape == browser.shape
    mean_abs = float(np.abs(browser.astype(np.float32) - cli).mean() / 255)
    print(f"{name}: browser vs CLI mean abs {mean_abs * 255:.3f}/255")
    assert mean_abs <= 2 / 255, f"{name}: mean abs {mean_abs * 255:.2f}/255"
    return mean_abs


def test_cli_mask_matches_the_browser(harness, web_root, tmp_path, capsys):
    info = harness.load("tiny")
    assert info["ok"], info
    assert f"u2netp {info['variant']} (bundle" in _cli(PHOTOS, tmp_path, web_root / "tiny", "mask", capsys)
    for photo in PHOTOS:
        browser = harness.cut(photo.read_bytes(), output="mask", format="raw", refine=False)
        assert browser["ok"], browser
        with Image.open(tmp_path / f"{photo.stem}.png") as img:
            _mean_abs(browser["rgba"][..., 0], np.asarray(img), f"{photo.name} mask")


def test_cli_cutout_of_a_transparent_photo_matches_the_browser(harness, web_root, tmp_path, capsys):
    assert harness.load("tiny")["ok"]
    rgba = np.asarray(Image.open(PHOTOS[0]).convert("RGBA").resize((192, 128))).copy()
    rgba[:, :64, 3] = 0  # the left third transparent, the photo's colours stored underneath
    photo = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(photo)
    _cli([photo], tmp_path / "out", web_root / "tiny", "cutout", capsys)
    browser = harness.cut(photo.read_bytes(), output="cutout", format="raw", refine=False)
    assert browser["ok"], browser
    with Image.open(tmp_path / "out" / "transparent.png") as img:
        cli = np.asarray(img)
    assert (cli[:, :64, 3] == 0).all() and (browser["rgba"][:, :64, 3] == 0).all()
    _mean_abs(browser["rgba"][..., 3], cli[..., 3], "transparent.png cutout alpha")


def test_cli_colour_background_matches_the_browser_without_bias(harness, web_root, tmp_path, capsys):
    # Both sides round the composite once (Uint8ClampedArray and numpy round to nearest): no half-level offset.
    assert harness.load("tiny")["ok"]
    photo = PHOTOS[0]
    args = ["cut", str(photo), "-o", str(tmp_path), "--bundle", str(web_root / "tiny"), "--output", "color",
            "--color", "#3366cc", "--refine", "off"]
    assert clearcut(args) == 0
    browser = harness.cut(photo.read_bytes(), output="color", color="#3366cc", format="raw", refine=False)
    assert browser["ok"], browser
    with Image.open(tmp_path / f"{photo.stem}.png") as img:
        cli = np.asarray(img.convert("RGB")).astype(np.float32)
    _mean_abs(browser["rgba"][..., :3], cli, f"{photo.name} colour composite")
    bias = float((browser["rgba"][..., :3].astype(np.float32) - cli).mean())
    assert abs(bias) < 0.25, f"the browser's composite is {bias:+.2f} levels off the CLI's on average"
