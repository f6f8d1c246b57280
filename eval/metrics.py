"""Quality of an alpha map against a ground-truth mask.

The salient-object metrics come from pysodmetrics (the implementations papers report with); only the
boundary measure is ours. Per-image results keep the F-beta and E-measure curves (256 thresholds) so the
dataset numbers can be aggregated exactly as pysodmetrics does (mean curve over images, then max / mean).
"""
from __future__ import annotations

import warnings

import numpy as np
import py_sod_metrics as sod
from scipy import ndimage

BETA2 = 0.3
# Band around the GT edge, as a fraction of the image diagonal (Boundary IoU uses 2 %; we look closer).
BAND_FRACTION = 0.01


def to_uint8(alpha: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(alpha, np.float64) * 255.0), 0, 255).astype(np.uint8)


def band_width(shape: tuple[int, int], fraction: float = BAND_FRACTION) -> int:
    return max(1, int(round(fraction * float(np.hypot(*shape)))))


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the inner contour)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def _within(mask: np.ndarray, distance: int) -> np.ndarray:
    """Pixels within ``distance`` (Euclidean) of any pixel of ``mask``."""
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~mask) <= distance


def boundary_scores(alpha: np.ndarray, gt: np.ndarray, band: int | None = None) -> dict:
    """Boundary F (contours matched within ``band`` px) and Boundary IoU (masks compared inside the band
    around each mask's own edge), both on the masks binarised at 0.5. Empty-vs-empty counts as perfect."""
    pred_mask, gt_mask = np.asarray(alpha) > 0.5, np.asarray(gt) > 0.5
    band = band_width(gt_mask.shape) if band is None else band
    pred_edge, gt_edge = _edge(pred_mask), _edge(gt_mask)
    if not pred_edge.any() and not gt_edge.any():
        boundary_f = 1.0
    elif not pred_edge.any() or not gt_edge.any():
        boundary_f = 0.0
    else:
        precision = float((pred_edge & _within(gt_edge, band)).sum() / pred_edge.sum())
        recall = float((gt_edge & _within(pred_edge, band)).sum() / gt_edge.sum())
        boundary_f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    pred_band = pred_mask & _within(pred_edge, band)
    gt_band = gt_mask & _within(gt_edge, band)
    union = (pred_band | gt_band).sum()
    boundary_iou = 1.0 if union == 0 else float((pred_band & gt_band).sum() / union)
    return {"boundary_f": boundary_f, "boundary_iou": boundary_iou, "band_px": band}


def image_metrics(alpha: np.ndarray, gt: np.ndarray, band: int | None = None) -> dict:
    """All quality numbers for one image: ``alpha`` and ``gt`` are HxW floats in [0, 1] of the same size."""
    if alpha.shape != gt.shape:
        raise ValueError(f"alpha {alpha.shape} and ground truth {gt.shape} differ in size")
    pred8, gt8 = to_uint8(alpha), to_uint8(gt)
    with warnings.catch_warnings():  # Fmeasure warns that FmeasureV2 will replace it; its numbers are the standard
        warnings.simplefilter("ignore")
        mae, fm, sm, em, wfm = sod.MAE(), sod.Fmeasure(beta=BETA2), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    for metric in (mae, fm, sm, em, wfm):
        metric.step(pred=pred8, gt=gt8)
    f_curve = np.asarray(fm.get_results()["fm"]["curve"], np.float64)
    e_curve = np.asarray(em.get_results()["em"]["curve"], np.float64)
    return {
        "mae": float(mae.get_results()["mae"]),
        "max_f": float(f_curve.max()),
        "mean_f": float(f_curve.mean()),
        "s_measure": float(sm.get_results()["sm"]),
        "e_measure": float(e_curve.mean()),
        "weighted_f": float(wfm.get_results()["wfm"]),
        **boundary_scores(alpha, gt, band),
        "f_curve": f_curve.tolist(),
        "e_curve": e_curve.tolist(),
    }


SUMMARY_KEYS = ("mae", "max_f", "mean_f", "s_measure", "e_measure", "weighted_f", "boundary_f", "boundary_iou")


def summarize(per_image: list[dict]) -> dict:
    """Dataset numbers: max/mean F-beta and mean E-measure from the mean curves (as pysodmetrics), the rest
    as means over images."""
    if not per_image:
        return {}
    f_curve = np.mean([m["f_curve"] for m in per_image], axis=0)
    e_curve = np.mean([m["e_curve"] for m in per_image], axis=0)
    summary = {key: float(np.mean([m[key] for m in per_image])) for key in SUMMARY_KEYS}
    summary.update(max_f=float(f_curve.max()), mean_f=float(f_curve.mean()), e_measure=float(e_curve.mean()),
                   images=len(per_image))
    return summary
