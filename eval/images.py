"""Image loading and the reference preprocessing (Python side of the single source of truth).

The browser runtime reproduces ``preprocess`` from the same registry values; tests compare both.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.registry import Preprocessing

# Real photos bundled inside the scikit-image wheel: present on any machine after `make setup`.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png")

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR}

# Refuse decompression bombs early with a clear message (Pillow's own guard only warns below 2x).
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An input image that cannot be used."""


def sample_photos() -> list[Path]:
    """Paths of the bundled real photos used for parity checks and default calibration."""
    root = importlib.resources.files("skimage") / "data"
    paths = [Path(str(root / name)) for name in SAMPLE_PHOTOS]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"scikit-image sample photos missing: {missing}; run `make setup`")
    return paths


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 RGB array, honouring EXIF orientation."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} exceeds the {max_pixels:,}-pixel limit")
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except ImageError:
        raise
    except Exception as err:  # Pillow raises several types for undecodable files
        raise ImageError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def preprocess(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """HxWx3 uint8 → 1x3xhxw float32 model input, as the registry describes."""
    height, width = pre.input_size
    resized = np.asarray(Image.fromarray(rgb).resize((width, height), RESAMPLE[pre.resize]), dtype=np.float32)
    scale = max(float(resized.max()), 1e-6) if pre.scale == "max" else float(pre.scale)
    x = (resized / scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def alpha_to_image_size(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model-size alpha map (h x w, float in [0, 1]) → full-resolution (H x W) by bilinear upsampling."""
    height, width = size
    img = Image.fromarray(alpha.astype(np.float32), mode="F")
    return np.clip(np.asarray(img.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)
