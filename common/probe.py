"""The probe: a fixed input whose expected alpha the export records per engine graph, so that the browser runtime
can check an engine's result before trusting it (a GPU driver bug or a precision problem shows as a probe that
does not match). web_runtime/src/probe.js builds the same input and pools the output the same way.

The input is made directly at the graph's input size in normalized space, so no image decoding or resizing
enters it: an image in [0, 1] — a horizontal grey ramp with a warm disc in the middle — then
``(value - mean) / std`` per channel, computed in float64 and stored as float32 (JS: doubles into a
Float32Array, the same rounding).
"""
from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

PROBE_CELLS = 32  # the alpha is compared as a 32 × 32 grid of cell means
PROBE_VERSION = 1
DISC_COLOUR = (0.9, 0.35, 0.2)


def probe_input(input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The probe at ``input_size`` (height, width) as the graph's 1 × 3 × H × W float32 input."""
    h, w = (int(v) for v in input_size)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = 0.2 + 0.6 * x / max(w - 1, 1)
    cy, cx, r = (h - 1) / 2, (w - 1) / 2, 0.3 * min(h, w)
    disc = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    planes = [np.where(disc, DISC_COLOUR[c], ramp) for c in range(3)]
    image = np.stack([(p - mean[c]) / std[c] for c, p in enumerate(planes)])
    return image.astype(np.float32)[None]


def pooled(alpha: np.ndarray, cells: int = PROBE_CELLS) -> np.ndarray:
    """Means of the alpha map over a cells × cells grid (cell edges at floor(i·H/cells)), float64."""
    a = np.asarray(alpha, np.float64).reshape(alpha.shape[-2:])
    h, w = a.shape
    rows = [(i * h) // cells for i in range(cells + 1)]
    cols = [(j * w) // cells for j in range(cells + 1)]
    return np.array([[a[rows[i]:max(rows[i + 1], rows[i] + 1), cols[j]:max(cols[j + 1], cols[j] + 1)].mean()
                      for j in range(cells)] for i in range(cells)])


def probe_record(alpha: np.ndarray, tolerance: float) -> dict:
    """The manifest's ``probe`` of a graph whose output on the probe is ``alpha``: the pooled alpha as bytes
    (round(255·v), base64) and the largest mean abs difference the runtime accepts."""
    grid = np.clip(np.rint(pooled(alpha) * 255), 0, 255).astype(np.uint8)
    return {"version": PROBE_VERSION, "cells": PROBE_CELLS, "expected": base64.b64encode(grid.tobytes()).decode(),
            "tolerance": float(tolerance)}


def probe_difference(alpha: np.ndarray, record: dict) -> float:
    """Mean abs difference between ``alpha``'s pooled grid and the recorded one (what the runtime compares)."""
    expected = np.frombuffer(base64.b64decode(record["expected"]), np.uint8).astype(np.float64) / 255
    return float(np.abs(pooled(alpha, record["cells"]).reshape(-1) - expected).mean())
