"""The eval's result cache (``<out>/cache/``): finished work as small JSON records, so an interrupted run
resumes where it stopped and a repeated one measures nothing twice.

Records have a kind and a key; the key names everything the record depends on. Kinds:

- ``image``: one row's results on one photo (``KEY.json``), with the row's photo-size alpha as an 8-bit PNG
  beside it (``KEY.png``, shown by the gallery);
- ``size``: a model file's download sizes (``size-KEY.json``);
- ``cpu``: a model file's CPU latency and peak memory (``cpu-KEY.json``).

Every file is written atomically; a record that cannot be read (say, half-written by an older version) counts
as missing and is computed again.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from common.files import atomic_write_bytes
from models.registry import Preprocessing

IMAGE, SIZE, CPU = "image", "size", "cpu"
FILE_PREFIX = {IMAGE: "", SIZE: "size-", CPU: "cpu-"}


def image_key(row_sha256: str, reference_sha256: str, image_sha256: str, preprocessing: Preprocessing,
              with_ground_truth: bool) -> str:
    """Key of a per-image record: the row's and the parity reference's weights, the photo (and its mask),
    the preprocessing and whether quality was scored."""
    parts = [row_sha256, reference_sha256, image_sha256, json.dumps(preprocessing.to_dict(), sort_keys=True),
             str(with_ground_truth)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def alpha_png(alpha: np.ndarray) -> bytes:
    """An alpha map in [0, 1] as an 8-bit grey PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class ResultCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def record_path(self, kind: str, key: str) -> Path:
        return self.directory / f"{FILE_PREFIX[kind]}{key}.json"

    def alpha_path(self, key: str) -> Path:
        """The PNG of an ``image`` record's alpha."""
        return self.directory / f"{key}.png"

    def get(self, kind: str, key: str) -> dict | None:
        """The stored record, or None when it is missing or unreadable (an ``image`` record also needs its PNG)."""
        if kind == IMAGE and not self.alpha_path(key).is_file():
            return None
        try:
            record = json.loads(self.record_path(kind, key).read_bytes())
        except (OSError, ValueError):  # missing, or truncated / not UTF-8 / not JSON
            return None
        return record if isinstance(record, dict) else None

    def put(self, kind: str, key: str, record: dict, alpha: np.ndarray | None = None) -> None:
        """Store ``record``; an ``image`` record comes with its photo-size ``alpha``, written first, so that a
        readable record always has its PNG."""
        if (kind == IMAGE) != (alpha is not None):
            raise ValueError(f"an alpha map goes with {IMAGE} records only (kind {kind})")
        if alpha is not None:
            atomic_write_bytes(self.alpha_path(key), alpha_png(alpha))
        atomic_write_bytes(self.record_path(kind, key), json.dumps(record).encode())

    def get_or_measure(self, kind: str, key: str, measure: Callable[[], dict]) -> dict:
        """The stored record, else ``measure()``'s, stored."""
        record = self.get(kind, key)
        if record is None:
            record = measure()
            self.put(kind, key, record)
        return record
