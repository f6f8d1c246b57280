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

# The parity gate's photos: people, animals, products, objects, indoor and outdoor, from PyPI packages every setup
# installs (package, file inside it) and data/parity-photos/ (street photos of people); never used to calibrate
# or code a variant (data/calib-photos/ holds those; the export checks the two sets are disjoint by sha256).
PACKAGE_GATE_PHOTOS = (*(("skimage", f"data/{name}") for name in SAMPLE_PHOTOS),
                       ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
                       ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
REPO_DATA = Path(__file__).resolve().parents[1] / "data"
GATE_FOLDER = REPO_DATA / "parity-photos"
CALIBRATION_FOLDER = REPO_DATA / "calib-photos"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
INT8_CALIBRATION_PHOTOS = 10  # of the calibration set, spread over it: the int8 activation ranges

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


def photos_in(folder: Path) -> list[Path]:
    """The photos of ``folder`` in name order (empty when it does not exist)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []


def gate_photos() -> list[Path]:
    """The parity gate's photos: the PyPI packages' photos, then data/parity-photos/."""
    paths = [Path(str(importlib.resources.files(package) / name)) for package, name in PACKAGE_GATE_PHOTOS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"parity-gate photos missing: {missing}; run `make setup`")
    return paths + photos_in(GATE_FOLDER)


def calibration_photos(count: int | None = INT8_CALIBRATION_PHOTOS) -> list[Path]:
    """``count`` photos spread over data/calib-photos/ (all of them for None): what calibrates a variant."""
    photos = photos_in(CALIBRATION_FOLDER)
    if count is None or count >= len(photos):
        return photos
    return photos[::len(photos) // count][:count]


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
