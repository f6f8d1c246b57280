"""Evaluation datasets in the common folder layout: ``images/NAME.(jpg|jpeg|png)`` + ``masks/NAME.png``.

This is the DIS5K / DUTS layout; masks are 0..255 and may be graded alpha. Problems with single files are
reported with the file's path and the item is skipped; only a folder with nothing usable is an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eval.images import ImageError, load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"


class DatasetError(ValueError):
    """The dataset folder as a whole cannot be used."""


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path | None  # None: a photo without ground truth (parity only)


def scan(root: Path) -> tuple[list[Sample], list[str]]:
    """The usable (image, mask) pairs under ``root`` and one message per skipped file."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no images/ folder (expected images/NAME.jpg|png and masks/NAME.png)")
    if not masks_dir.is_dir():
        raise DatasetError(f"{root}: no masks/ folder (expected masks/NAME.png beside images/)")
    problems: list[str] = []
    samples: list[Sample] = []
    for path in sorted(p for p in images_dir.iterdir() if not p.name.startswith(".")):
        if path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); skipped")
            continue
        mask = masks_dir / f"{path.stem}{MASK_SUFFIX}"
        if not mask.is_file():
            problems.append(f"{path}: missing mask {mask}; skipped")
            continue
        samples.append(Sample(path.stem, path, mask))
    names = [s.name for s in samples]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    for name in duplicates:
        problems.append(f"{images_dir}: several images named {name}.* share one mask; all skipped")
    samples = [s for s in samples if s.name not in duplicates]
    if not samples:
        detail = f" ({len(problems)} files skipped: {problems[0]} ...)" if problems else ""
        raise DatasetError(f"{root}: no usable image/mask pairs in images/ + masks/{detail}")
    return samples, problems


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth mask as float in [0, 1], HxW; ``size`` (H, W) must match its photo."""
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except Exception as err:  # Pillow raises several types for undecodable files
        raise ImageError(f"{path}: not a readable mask image ({type(err).__name__}: {err})") from err
    if mask.shape != tuple(size):
        raise ImageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its photo is {size[1]}x{size[0]}; "
                         "masks must have the photo's size")
    return mask


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """(HxWx3 uint8 photo, HxW float mask or None); raises ImageError naming the bad file."""
    rgb = load_rgb(sample.image)
    mask = None if sample.mask is None else load_mask(sample.mask, rgb.shape[:2])
    return rgb, mask
