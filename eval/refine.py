"""Edge refinement: the numpy twin of ``web_runtime/src/refine.js`` (same steps, same constants).

The constants live in one place, ``web_runtime/refine.json``: the bundle builder copies them into the bundle
manifest (``manifest.refine``), which is where the browser runtime reads them; this module reads the file.

Steps (all planes float32 between steps, arithmetic in float64, as the JS stores Float32Arrays and computes
in doubles):

1. Work image: the photo and the mask, area-averaged over s×s blocks (s the smallest integer that brings the
   long side to at most ``work_max_side``; partial blocks at the right/bottom edge average what they hold).
2. Fast guided filter (He, Sun, Tang, "Guided Image Filtering", and He & Sun, "Fast Guided Filter", 2015):
   with the work image's RGB as a 3-channel guide, per window of radius r the local linear model
   alpha ≈ a·I + b (a a 3-vector, ridge ``eps``), coefficients averaged over the windows, then bilinearly
   upsampled to the photo and applied to the full-resolution RGB, so thin structures come from the photo.
3. Only in the uncertain band (work pixels whose mask is in ``uncertain`` and their neighbours within
   ``band_radius``) and weighted by the model's own uncertainty: α' = α + 4α(1 − α)(q − α), so the filter
   decides where the model hesitates and confident foreground and background stay as the model made them.
4. Colour decontamination (the "blur-fusion" estimator of Forte & Pitié, "Approximate Fast Foreground Colour
   Estimation", ICIP 2021): local means of foreground and background colour weighted by alpha, first with a
   large radius (F = B = image) and again with a small one seeded by the first estimate, computed on the work
   image; at every partly transparent photo pixel, F = F̂ + α(I − αF̂ − (1 − α)B̂) with the upsampled means,
   so the cutout's edge pixels carry the subject's colour instead of the old background's.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

PARAMS_FILE = Path(__file__).resolve().parents[1] / "web_runtime" / "refine.json"
DIVISION_GUARD = 1e-5  # keeps the alpha-weighted colour means finite where there is no weight at all


@lru_cache(maxsize=1)
def _load_params() -> dict:
    return json.loads(PARAMS_FILE.read_text())


def load_params() -> dict:
    """The refinement constants (a fresh copy of ``web_runtime/refine.json``)."""
    return dict(_load_params())


def work_factor(width: int, height: int, max_side: int) -> int:
    return max(1, math.ceil(max(width, height) / max_side))


def radius_px(fraction: float, long_side: int) -> int:
    """A radius given as a fraction of the work image's long side, in work pixels (at least 1).
    Rounded half up, like JS ``Math.round``."""
    return max(1, math.floor(fraction * long_side + 0.5))


def box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)² window, borders replicated; rows then columns, float32 between the passes."""
    out = np.asarray(x, np.float32)
    n = 2 * r + 1
    for axis in (1, 0):
        a = np.moveaxis(out, axis, 0).astype(np.float64)
        padded = np.concatenate([np.repeat(a[:1], r, axis=0), a, np.repeat(a[-1:], r, axis=0)])
        sums = np.cumsum(padded, axis=0)
        sums = np.concatenate([np.zeros_like(sums[:1]), sums])
        out = np.moveaxis(((sums[n:] - sums[:-n]) / n).astype(np.float32), 0, axis)
    return np.ascontiguousarray(out)


def downscale(x: np.ndarray, s: int, divide: float = 1.0) -> np.ndarray:
    """Area mean over s×s blocks (partial blocks at the edges average the pixels they hold), / ``divide``."""
    x = np.asarray(x, np.float64)
    if s == 1:
        return (x / divide).astype(np.float32)
    height, width = x.shape[:2]
    ys, xs = np.arange(0, height, s), np.arange(0, width, s)
    sums = np.add.reduceat(np.add.reduceat(x, ys, axis=0), xs, axis=1)
    counts = np.diff(np.append(ys, height))[:, None] * np.diff(np.append(xs, width))[None, :]
    if x.ndim == 3:
        counts = counts[..., None]
    return (sums / counts / divide).astype(np.float32)


def _taps(size: int, low: int, s: int):
    """Bilinear taps from work pixels (centred at (j + 0.5)·s − 0.5) to photo pixels 0..size−1."""
    u = np.clip((np.arange(size) + 0.5) / s - 0.5, 0, low - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, low - 1)
    return i0, i1, u - i0


class _Upsampler:
    """Bilinear values of stacked work-resolution planes (h x w x k) at selected photo pixels (N x k)."""

    def __init__(self, ys: np.ndarray, xs: np.ndarray, width: int, height: int, low_w: int, low_h: int, s: int):
        x0, x1, fx = _taps(width, low_w, s)
        y0, y1, fy = _taps(height, low_h, s)
        self.fx, self.fy = fx[xs][:, None], fy[ys][:, None]
        self.corners = [y0[ys] * low_w + x0[xs], y0[ys] * low_w + x1[xs], y1[ys] * low_w + x0[xs],
                        y1[ys] * low_w + x1[xs]]

    def __call__(self, planes: np.ndarray) -> np.ndarray:
        flat = planes.reshape(-1, planes.shape[-1]).astype(np.float64)
        p00, p01, p10, p11 = (flat[i] for i in self.corners)
        top = (1 - self.fx) * p00 + self.fx * p01
        bottom = (1 - self.fx) * p10 + self.fx * p11
        return (1 - self.fy) * top + self.fy * bottom


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float64).astype(np.float32)


def guided_coefficients(guide: np.ndarray, p: np.ndarray, r: int, eps: float):
    """Colour guided filter at the work resolution: the window-averaged (a_r, a_g, a_b) and b."""
    mean_i = [box(guide[..., c], r) for c in range(3)]
    mean_p = box(p, r)
    cov_ip = [box(_f32(guide[..., c] * p), r).astype(np.float64) - mean_i[c].astype(np.float64) * mean_p
              for c in range(3)]
    var = {}
    for c, d in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)):
        var[c, d] = (box(_f32(guide[..., c] * guide[..., d]), r).astype(np.float64)
                     - mean_i[c].astype(np.float64) * mean_i[d] + (eps if c == d else 0.0))
    rr, rg, rb, gg, gb, bb = var[0, 0], var[0, 1], var[0, 2], var[1, 1], var[1, 2], var[2, 2]
    # Inverse of the symmetric 3×3 covariance by its adjugate.
    i_rr, i_rg, i_rb = gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb
    i_gg, i_gb, i_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    det = rr * i_rr + rg * i_rg + rb * i_rb
    cr, cg, cb = cov_ip
    a_r = _f32((i_rr * cr + i_rg * cg + i_rb * cb) / det)
    a_g = _f32((i_rg * cr + i_gg * cg + i_gb * cb) / det)
    a_b = _f32((i_rb * cr + i_gb * cg + i_bb * cb) / det)
    b = _f32(mean_p - a_r.astype(np.float64) * mean_i[0] - a_g.astype(np.float64) * mean_i[1]
             - a_b.astype(np.float64) * mean_i[2])
    return [box(a_r, r), box(a_g, r), box(a_b, r)], box(b, r)


def _apply(planes, guide):
    """clamp(a·I + b, 0, 1) in float64 (``planes`` = a_r, a_g, a_b, b on the last axis), in the JS order."""
    q = planes[..., 0] * guide[..., 0] + planes[..., 1] * guide[..., 1] + planes[..., 2] * guide[..., 2] + planes[..., 3]
    return np.clip(q, 0.0, 1.0)


def _blend(model: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Trust the filter where the model is unsure: weight 4α(1 − α) (1 at α = 0.5, 0 at 0 and 1)."""
    m = model.astype(np.float64)
    return m + 4 * m * (1 - m) * (filtered - m)


def foreground_means(guide: np.ndarray, alpha: np.ndarray, r_large: int, r_small: int):
    """Blur-fusion foreground/background colour means (two passes) at the work resolution."""
    a = alpha.astype(np.float64)[..., None]
    blur_a = box(alpha, r_large).astype(np.float64)[..., None]
    f_hat = box(_f32(guide * a), r_large) / (blur_a + DIVISION_GUARD)
    b_hat = box(_f32(guide * (1 - a)), r_large) / ((1 - blur_a) + DIVISION_GUARD)
    f_hat, b_hat = f_hat.astype(np.float32).astype(np.float64), b_hat.astype(np.float32).astype(np.float64)
    f1 = _f32(np.clip(f_hat + a * (guide - a * f_hat - (1 - a) * b_hat), 0.0, 1.0))
    blur_a2 = box(alpha, r_small).astype(np.float64)[..., None]
    f2 = _f32(box(_f32(f1 * a), r_small) / (blur_a2 + DIVISION_GUARD))
    b2 = _f32(box(_f32(b_hat * (1 - a)), r_small) / ((1 - blur_a2) + DIVISION_GUARD))
    return f2, b2


def want_refine(requested, params: dict, width: int, height: int, input_size) -> bool:
    """The runtime's decision (``wantRefine`` in refine.js): the caller's choice, else ``params["default"]``;
    "auto" refines when the mask is upsampled at least ``auto_min_upscale`` times to the photo."""
    mode = params.get("default", False) if requested is None else requested
    if mode == "auto":
        return max(height / input_size[0], width / input_size[1]) >= params["auto_min_upscale"]
    return bool(mode)


def refine(alpha: np.ndarray, rgb: np.ndarray, params: dict | None = None,
           decontaminate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refined alpha (HxW float32 in [0, 1]) and the photo with decontaminated edge colours (HxWx3 uint8)
    from the model's alpha at photo size (``alpha``, HxW) and the photo (``rgb``, HxWx3 uint8)."""
    p = load_params() if params is None else params
    if decontaminate is None:
        decontaminate = bool(p.get("decontaminate", True))
    height, width = alpha.shape
    if rgb.shape[:2] != (height, width):
        raise ValueError(f"alpha {alpha.shape} and photo {rgb.shape[:2]} differ in size")
    alpha = np.clip(np.asarray(alpha, np.float32), 0, 1)
    rgb = np.asarray(rgb, np.uint8)
    s = work_factor(width, height, p["work_max_side"])
    guide_low = downscale(rgb, s, 255.0)
    p_low = downscale(alpha, s)
    low_h, low_w = p_low.shape
    long_low = max(low_w, low_h)
    r = radius_px(p["radius"], long_low)
    lo, hi = p["uncertain"]
    uncertain = ((p_low.astype(np.float64) > lo) & (p_low.astype(np.float64) < hi)).astype(np.float32)
    band_low = box(uncertain, radius_px(p["band_radius"], long_low)) > 1e-6
    coeffs, bias = guided_coefficients(guide_low, p_low, r, p["eps"])
    planes = np.stack(coeffs + [bias], axis=-1)

    out = alpha.copy()
    ys, xs = np.nonzero(band_low[np.arange(height) // s][:, np.arange(width) // s])
    if len(ys):
        up = _Upsampler(ys, xs, width, height, low_w, low_h, s)
        guide = rgb[ys, xs].astype(np.float64) / 255.0
        out[ys, xs] = _f32(_blend(alpha[ys, xs], _apply(up(planes), guide)))
    colours = rgb.copy()
    if decontaminate:
        low_alpha = np.where(band_low, _f32(_blend(p_low, _apply(planes.astype(np.float64), guide_low))), p_low)
        f2, b2 = foreground_means(guide_low.astype(np.float64), low_alpha.astype(np.float32),
                                  radius_px(p["fg_radius_large"], long_low), radius_px(p["fg_radius_small"], long_low))
        a64 = out.astype(np.float64)
        ys, xs = np.nonzero((a64 > 0.5 / 255) & (a64 < 1 - 0.5 / 255))
        if len(ys):
            up = _Upsampler(ys, xs, width, height, low_w, low_h, s)
            a = a64[ys, xs][:, None]
            image = rgb[ys, xs].astype(np.float64) / 255.0
            means = up(np.concatenate([f2, b2], axis=-1))
            f, b = means[:, :3], means[:, 3:]
            fg = np.clip(f + a * (image - a * f - (1 - a) * b), 0.0, 1.0)
            colours[ys, xs] = np.floor(fg * 255.0 + 0.5).astype(np.uint8)
    return out, colours
