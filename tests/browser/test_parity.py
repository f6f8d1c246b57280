"""The browser's mask and cutout match the Python onnxruntime reference of the same ONNX file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eval.images import load_rgb, sample_photos
from .conftest import REAL_BUILD, python_alpha, real_manifest, real_variant

PHOTOS = [p for p in sample_photos() if p.name in ("astronaut.png", "chelsea.png")]


def _check(harness, onnx_path, manifest, photo):
    rgb = load_rgb(photo)
    reference = python_alpha(onnx_path, manifest, rgb)
    # The model's own mask: refinement (on by default for photos much larger than the model input) is
    # compared with its numpy twin in test_refine.py.
    mask = harness.cut(photo.read_bytes(), output="mask", format="raw", refine=False)
    assert mask["ok"], mask
    assert (mask["height"], mask["width"]) == rgb.shape[:2]
    browser = mask["rgba"][..., 0].astype(np.float32) / 255
    mean_abs = float(np.abs(browser - reference).mean())
    a, b = browser >= 0.5, reference >= 0.5
    union = np.logical_or(a, b).sum()
    iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
    assert mean_abs <= 2 / 255, f"{photo.name}: mean abs diff {mean_abs * 255:.2f}/255"
    assert iou >= 0.999, f"{photo.name}: IoU@0.5 {iou:.5f}"

    cutout = harness.cut(photo.read_bytes(), output="cutout", format="raw", refine=False)
    assert cutout["ok"], cutout
    assert np.array_equal(cutout["rgba"][..., :3], rgb), "cutout colours must be the original pixels"
    cut_alpha = cutout["rgba"][..., 3].astype(np.float32) / 255
    assert float(np.abs(cut_alpha - reference).mean()) <= 2 / 255
    return mean_abs, iou


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_tiny_model_parity(harness, tiny_build, variant):
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    info = harness.load("tiny", variant=variant)
    assert info["ok"], info
    assert info["backend"] == "wasm" and info["crossOriginIsolated"] and info["threads"] >= 1
    for photo in PHOTOS:
        _check(harness, tiny_build / manifest["variants"][variant]["path"], manifest, photo)


@pytest.mark.slow
def test_real_model_parity(harness, web_root):
    variant = real_variant()
    if variant is None or not (web_root / "real" / "manifest.json").exists():
        pytest.skip(f"{REAL_BUILD} has no finished build (run `make export`)")
    manifest = real_manifest()
    info = harness.load("real", variant=variant)
    assert info["ok"], info
    for photo in PHOTOS:
        mean_abs, iou = _check(harness, REAL_BUILD / manifest["variants"][variant]["path"], manifest, photo)
        print(f"{photo.name}: {variant} mean abs {mean_abs * 255:.3f}/255 IoU {iou:.5f}")
