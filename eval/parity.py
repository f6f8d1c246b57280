"""Parity of an ONNX variant against the torch fp32 reference, and the gate that enforces it."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from models.registry import ParityThresholds


def iou_at(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the two masks binarised at ``threshold``; two empty masks agree perfectly."""
    fa, fb = a > threshold, b > threshold
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)


def image_parity(name: str, output: np.ndarray, reference: np.ndarray) -> dict:
    """How far one alpha map in [0, 1] is from its reference: largest and mean absolute difference, IoU@0.5."""
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    return {"image": name, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "iou": iou_at(output, reference)}


def summarize_parity(per_image: Sequence[dict]) -> dict:
    """The summary of ``image_parity`` results: worst and mean difference, mean and worst IoU, and which image
    has the worst IoU."""
    ious = [p["iou"] for p in per_image]
    worst = sorted(per_image, key=lambda p: (p["iou"], p["image"]))
    return {
        "max_abs": float(max(p["max_abs"] for p in per_image)),
        "mean_abs": float(np.mean([p["mean_abs"] for p in per_image])),
        "iou_mean": float(np.mean(ious)),
        "iou_p10": float(np.percentile(ious, 10)),  # a low percentile: no single photo decides it
        "iou_worst": float(min(ious)),
        "worst_image": per_image[int(np.argmin(ious))]["image"],
        "worst_images": [f"{p['image']} {p['iou']:.4f}" for p in worst[:3]],
    }


def compare(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Per-image and summary differences between alpha maps in [0, 1]."""
    per_image = [image_parity(name, out, ref) for name, out, ref in zip(names, outputs, references)]
    return {**summarize_parity(per_image), "images": per_image}


def gate_failures(variant: str, numbers: dict, limits: ParityThresholds) -> list[str]:
    """Human-readable reasons a variant fails its thresholds (empty when it passes)."""
    failures = []
    for field in dataclasses.fields(limits):
        bound = getattr(limits, field.name)
        if bound is None:
            continue
        value = numbers[field.name]
        is_upper = field.name in ("max_abs", "mean_abs")
        if (value > bound) if is_upper else (value < bound):
            failures.append(f"{variant}: {field.name} = {value:.6g} {'>' if is_upper else '<'} {bound:g}"
                            + ("" if is_upper else f" (worst image: {numbers['worst_image']})"))
    return failures


class ParityGateError(RuntimeError):
    """A variant is below its registry thresholds."""
