"""`clearcut cut --bundle` and the browser's `cut` give the same mask for the same bundle and photo."""
from __future__ import annotations

import numpy as np
from PIL import Image

from eval.images import sample_photos
from export.cli import main as clearcut

PHOTOS = [p for p in sample_photos() if p.name in ("astronaut.png", "chelsea.png")]


def test_cli_mask_matches_the_browser(harness, web_root, tmp_path, capsys):
    info = harness.load("tiny")
    assert info["ok"], info
    args = ["cut", *map(str, PHOTOS), "-o", str(tmp_path), "--bundle", str(web_root / "tiny"), "--output", "mask",
            "--refine", "off"]
    assert clearcut(args) == 0
    assert f"u2netp {info['variant']} (bundle" in capsys.readouterr().err  # the same default variant
    for photo in PHOTOS:
        browser = harness.cut(photo.read_bytes(), output="mask", format="raw", refine=False)
        assert browser["ok"], browser
        with Image.open(tmp_path / f"{photo.stem}.png") as img:
            cli = np.asarray(img, np.float32) / 255
        assert cli.shape == browser["rgba"].shape[:2]
        mean_abs = float(np.abs(browser["rgba"][..., 0] / 255 - cli).mean())
        print(f"{photo.name}: browser vs CLI mask mean abs {mean_abs * 255:.3f}/255")
        assert mean_abs <= 2 / 255, f"{photo.name}: mean abs {mean_abs * 255:.2f}/255"
