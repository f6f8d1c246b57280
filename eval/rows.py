"""The rows of `make eval`: each compared model is one object with one interface, one class per kind.

A row has a ``name``, a ``kind`` (``onnx``, ``torch``, ``peer``, ``refine``: report.json's field), the
``sha256`` its cached results are keyed by, the ``file`` it comes from, and a parity ``reference`` (another
row, or itself). ``predict(photo)`` gives its alpha for one photo, ``parity(photo)`` compares that with the
reference's, ``parity_summary`` sums up the photos, ``size(bench)`` is its download and
``latency(bench, seconds)`` its speed, given its per-photo prediction times. A new kind is a new class here.
"""
from __future__ import annotations

import gzip
import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from common.contract import INPUT_NAME
from common.files import sha256_file
from common.sessions import cpu_session
from eval import cpu_probe
from eval import refine as refinement
from eval.cache import CPU, SIZE, ResultCache
from eval.images import alpha_to_image_size, preprocess
from eval.parity import image_parity, summarize_parity
from eval.peers import imgly_preprocess
from models.registry import Preprocessing, get_model_config

THREADS = 2
TORCH_ROW = "torch"
REFINE_SUFFIX = "+refine"
# brotli quality for the download-size column: 9 (window 2^22) takes ~2 s per 20 MiB here; 11 takes ~30x
# longer for ~2.7 % less on int8w (measured on a 20 MiB chunk). `--brotli-quality 11` for the static best.
BROTLI_QUALITY = 9


def download_sizes(path: Path, recorded: dict, sha256: str, brotli_quality: int = BROTLI_QUALITY) -> dict:
    """Raw, gzip (-9) and, when the `brotli` module is importable, brotli sizes of the model file."""
    sizes = {"bytes": path.stat().st_size}
    if recorded.get("sha256") == sha256 and recorded.get("gzip_bytes"):
        sizes["gzip_bytes"] = recorded["gzip_bytes"]
    else:
        sizes["gzip_bytes"] = len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    try:
        import brotli
    except ImportError:
        sizes["brotli_bytes"] = None
    else:
        sizes["brotli_bytes"] = len(brotli.compress(path.read_bytes(), quality=brotli_quality))
        sizes["brotli_quality"] = brotli_quality
    return sizes


def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1000)


@dataclass
class Prediction:
    alpha: np.ndarray  # the row's own output: at its model's size (refined rows: at the photo's)
    full: np.ndarray  # at the photo's size
    seconds: float


class Photo:
    """One photo under evaluation: its pixels, the registry's model input, and each row's prediction, made
    once (a refined row reuses its base's, every row its parity reference's)."""

    def __init__(self, name: str, rgb: np.ndarray, preprocessing: Preprocessing):
        self.name, self.rgb, self.preprocessing = name, rgb, preprocessing
        self._predictions: dict[str, Prediction] = {}

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    @cached_property
    def model_input(self) -> np.ndarray:
        return preprocess(self.rgb, self.preprocessing)

    def prediction(self, row: Row) -> Prediction:
        if row.name not in self._predictions:
            self._predictions[row.name] = row.predict(self)
        return self._predictions[row.name]


@dataclass
class Bench:
    """What rows measure size and speed with."""
    cache: ResultCache
    log: Callable[[str], None]
    latency_runs: int
    brotli_quality: int
    latency_photo: Photo | None = None  # the first photo that could be evaluated: the latency input


class Row(ABC):
    kind: str

    def __init__(self, name: str, sha256: str, file: Path | None, reference: Row | None = None):
        self.name, self.sha256, self.file = name, sha256, file
        self.reference = reference or self  # without one, the row is the parity reference

    @abstractmethod
    def predict(self, photo: Photo) -> Prediction:
        """The row's alpha for ``photo`` (use ``photo.prediction(row)``: it makes each prediction once)."""

    def parity(self, photo: Photo) -> dict:
        """``photo``'s parity against the reference row: at the model's size when both outputs have it, else
        (a peer with another input size) at the photo's."""
        own, reference = photo.prediction(self), photo.prediction(self.reference)
        if own.alpha.shape == reference.alpha.shape:
            return image_parity(photo.name, own.alpha, reference.alpha)
        return image_parity(photo.name, own.full, reference.full)

    def parity_summary(self, per_image: list[dict]) -> dict:
        return summarize_parity(per_image)

    @abstractmethod
    def size(self, bench: Bench) -> dict:
        """Download size: ``bytes``, ``gzip_bytes``, ``brotli_bytes`` (None where it does not apply)."""

    @abstractmethod
    def latency(self, bench: Bench, seconds: list[float]) -> dict:
        """Speed: ``median_ms`` and what it is; ``seconds`` are this row's prediction times per photo."""


class ModelRow(Row):
    """A row that runs a model on a model input."""

    def model_input(self, photo: Photo) -> np.ndarray:
        return photo.model_input

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Model input → the model's alpha output, 1x1xhxw."""

    def predict(self, photo: Photo) -> Prediction:
        x = self.model_input(photo)
        start = time.perf_counter()
        alpha = np.asarray(self.run(x), np.float32)[0, 0]
        seconds = time.perf_counter() - start
        return Prediction(alpha, alpha_to_image_size(alpha, photo.size), seconds)


class OnnxVariantRow(ModelRow):
    """A built ONNX variant, run by onnxruntime on the CPU; its speed and peak memory come from a probe
    process on the first photo."""
    kind = "onnx"

    def __init__(self, name: str, path: Path, recorded: dict | None = None, reference: Row | None = None):
        super().__init__(name, sha256_file(path), path, reference)
        self.recorded = recorded or {}  # the build manifest's entry for the file (its gzip size)
        self._session = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:  # opened on first use: a fully cached run never loads the model
            self._session = cpu_session(self.file, THREADS)
        return self._session.run(None, {INPUT_NAME: x})[0]

    def size(self, bench: Bench) -> dict:
        def measure() -> dict:
            bench.log(f"download sizes: {self.name} (gzip -9, brotli q{bench.brotli_quality})")
            return download_sizes(self.file, self.recorded, self.sha256, bench.brotli_quality)

        return bench.cache.get_or_measure(SIZE, f"{self.sha256[:32]}-br{bench.brotli_quality}", measure)

    def cpu_latency(self, bench: Bench) -> dict:
        def measure() -> dict:
            bench.log(f"latency + peak memory: {self.name} (onnxruntime CPU, {THREADS} threads, "
                      f"median of {bench.latency_runs})")
            return cpu_probe.measure(self.file, self.model_input(bench.latency_photo), bench.latency_runs, THREADS)

        return bench.cache.get_or_measure(CPU, f"{self.sha256[:32]}-{bench.latency_runs}", measure)

    def latency(self, bench: Bench, seconds: list[float]) -> dict:
        return self.cpu_latency(bench)


class PeerRow(OnnxVariantRow):
    """Someone else's ONNX (eval/peers.py), with its own preprocessing."""
    kind = "peer"

    def model_input(self, photo: Photo) -> np.ndarray:
        return imgly_preprocess(photo.rgb)


class TorchReferenceRow(ModelRow):
    """The torch model the variants were exported from (eager, fp32); timed per photo during the run."""
    kind = "torch"

    def __init__(self, model: str, weights: Path, reference: Row):
        super().__init__(TORCH_ROW, sha256_file(weights), weights, reference)
        self.config = get_model_config(model)
        self._model = None

    def run(self, x: np.ndarray) -> np.ndarray:
        from export.torch_to_onnx import reference_alpha

        if self._model is None:  # loaded on first use, like the ONNX sessions
            import torch

            from models.checkpoint import load_model
            torch.set_num_threads(THREADS)
            self._model = load_model(self.config, self.file, "state_dict").eval()
        return reference_alpha(self._model, self.config, x)

    def size(self, bench: Bench) -> dict:
        return {"bytes": self.file.stat().st_size, "gzip_bytes": None, "brotli_bytes": None}

    def latency(self, bench: Bench, seconds: list[float]) -> dict:
        return {"median_ms": median_ms(seconds), "note": "torch eager, per-image wall time during the run"}


class RefinedRow(Row):
    """An ONNX variant followed by the runtime's edge refinement (eval/refine.py, alpha only: colour
    decontamination does not change it). Keyed by the variant's weights, the refinement constants and the
    refinement code, so a change to either runs it again."""
    kind = "refine"

    def __init__(self, base: OnnxVariantRow, reference: RefinedRow | None = None):
        digest = hashlib.sha256("\n".join([base.sha256, refinement.PARAMS_FILE.read_text(),
                                           Path(refinement.__file__).read_text()]).encode()).hexdigest()
        super().__init__(base.name + REFINE_SUFFIX, digest, base.file, reference)
        self.base = base

    def predict(self, photo: Photo) -> Prediction:
        alpha = photo.prediction(self.base).full
        start = time.perf_counter()
        refined, _ = refinement.refine(alpha, photo.rgb, decontaminate=False)
        return Prediction(refined, refined, time.perf_counter() - start)

    def parity_summary(self, per_image: list[dict]) -> dict:
        return {**super().parity_summary(per_image), "against": self.reference.name}

    def size(self, bench: Bench) -> dict:
        return dict(self.base.size(bench))

    def latency(self, bench: Bench, seconds: list[float]) -> dict:
        refine_ms = median_ms(seconds)
        return {"median_ms": self.base.cpu_latency(bench)["median_ms"] + refine_ms, "refine_ms": refine_ms,
                "peak_rss_mb": None, "note": f"{self.base.name}'s latency + the numpy refinement's median per image"}
