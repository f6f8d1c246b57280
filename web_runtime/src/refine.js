// Edge refinement of the mask at the photo's full resolution: a fast colour guided filter limited to the
// uncertain band around the edge, plus colour decontamination of the partly transparent pixels.
// No constants here: they come from the bundle manifest's `refine` object (web_runtime/refine.json).
// eval/refine.py is the numpy twin of this file (same steps, same order of operations); the browser tests
// check that both agree.
//
// 1. Work image: photo and mask area-averaged over s×s blocks, s the smallest integer that brings the long
//    side to at most `work_max_side` (partial blocks at the right/bottom edge average what they hold).
// 2. Fast guided filter (He, Sun & Tang, "Guided Image Filtering"; He & Sun, "Fast Guided Filter", 2015):
//    on the work image, per window of radius r, the local linear model alpha ≈ a·RGB + b (ridge `eps`);
//    a and b are averaged over the windows, upsampled bilinearly and applied to the full-resolution RGB.
// 3. Only inside the band (work pixels whose mask is within `uncertain`, and their neighbours within
//    `band_radius`), and weighted by the model's own uncertainty: α' = α + 4α(1 − α)(q − α), so the filter
//    decides where the model hesitates (α ≈ 0.5) and confident foreground and background stay as they are.
// 4. Decontamination ("blur fusion", Forte & Pitié, "Approximate Fast Foreground Colour Estimation", ICIP
//    2021): alpha-weighted local means of foreground and background colour (a large-radius pass with
//    F = B = image, then a small-radius pass seeded by the first estimate) on the work image; at every partly
//    transparent pixel, F = F̂ + α(I − αF̂ − (1 − α)B̂), so edges keep the subject's colour, not the old
//    background's.

import { ClearCutError } from './errors.js';

const DIVISION_GUARD = 1e-5;
const PARTIAL_LOW = 0.5 / 255; // pixels whose 8-bit alpha is neither 0 nor 255 get decontaminated colours
const PARTIAL_HIGH = 1 - 0.5 / 255;

/**
 * Whether a cut refines: the caller's `refine` option when given (true/false), else the manifest's
 * `refine.default`: true, false, or "auto" (refine when the mask is upsampled at least `auto_min_upscale`
 * times from the model's input to the photo, where refinement measurably helps).
 * @param {boolean|'auto'|undefined} requested @param {import('./manifest').RefineParams | undefined} params manifest.refine
 * @param {number} width @param {number} height @param {number[]} inputSize model input [h, w]
 */
export function wantRefine(requested, params, width, height, inputSize) {
  const mode = requested ?? params?.default ?? false;
  if (mode === false) return false;
  if (!params) {
    throw new ClearCutError('manifest', 'This bundle\'s manifest has no `refine` constants: rebuild it with the current build_bundle to use refine.');
  }
  if (mode === 'auto') return Math.max(height / inputSize[0], width / inputSize[1]) >= params.auto_min_upscale;
  if (mode !== true) throw new ClearCutError('options', `refine must be true, false or "auto" (got ${JSON.stringify(mode)}).`);
  return true;
}

/**
 * Refine `alpha` (photo size, modified in place) and, when `params.decontaminate`, the RGB of `rgba` at
 * partly transparent pixels (modified in place). Returns what it did, for timing and tests.
 * @param {Float32Array} alpha mask at the photo's resolution, values in [0, 1]
 * @param {Uint8ClampedArray|Uint8Array} rgba the photo, RGBA8
 * @param {number} width @param {number} height
 * @param {{work_max_side: number, radius: number, eps: number, uncertain: number[], band_radius: number,
 *          decontaminate: boolean, fg_radius_large: number, fg_radius_small: number}} params
 * @param {{decontaminate?: boolean}} [options]
 */
export function refineEdges(alpha, rgba, width, height, params, options = {}) {
  const decontaminate = options.decontaminate ?? params.decontaminate;
  for (let i = 0; i < alpha.length; i++) alpha[i] = alpha[i] < 0 ? 0 : alpha[i] > 1 ? 1 : alpha[i];
  const s = Math.max(1, Math.ceil(Math.max(width, height) / params.work_max_side));
  const lw = Math.ceil(width / s), lh = Math.ceil(height / s), ln = lw * lh;
  const longLow = Math.max(lw, lh);
  const { guide, p } = downscale(rgba, alpha, width, height, s, lw, lh);
  const r = radiusPx(params.radius, longLow);
  const [lo, hi] = params.uncertain;
  const uncertain = new Float32Array(ln);
  for (let i = 0; i < ln; i++) uncertain[i] = p[i] > lo && p[i] < hi ? 1 : 0;
  const bandSum = boxFilter(uncertain, lw, lh, radiusPx(params.band_radius, longLow));
  const band = new Uint8Array(ln);
  for (let i = 0; i < ln; i++) band[i] = bandSum[i] > 1e-6 ? 1 : 0;
  const { a, b } = guidedCoefficients(guide, p, lw, lh, r, params.eps);

  const xTaps = taps(width, lw, s), yTaps = taps(height, lh, s);
  const lx = new Int32Array(width);
  for (let x = 0; x < width; x++) lx[x] = Math.floor(x / s);
  let bandPixels = 0;
  for (let y = 0; y < height; y++) {
    const rowBand = Math.floor(y / s) * lw;
    const y0 = yTaps.i0[y] * lw, y1 = yTaps.i1[y] * lw, fy = yTaps.f[y];
    for (let x = 0; x < width; x++) {
      if (!band[rowBand + lx[x]]) continue;
      bandPixels++;
      const x0 = xTaps.i0[x], x1 = xTaps.i1[x], fx = xTaps.f[x];
      const o = y * width + x, q = o * 4;
      const up = (plane) => (1 - fy) * ((1 - fx) * plane[y0 + x0] + fx * plane[y0 + x1])
        + fy * ((1 - fx) * plane[y1 + x0] + fx * plane[y1 + x1]);
      const v = up(a[0]) * (rgba[q] / 255) + up(a[1]) * (rgba[q + 1] / 255) + up(a[2]) * (rgba[q + 2] / 255) + up(b);
      alpha[o] = blend(alpha[o], v < 0 ? 0 : v > 1 ? 1 : v);
    }
  }
  let decontaminated = 0;
  if (decontaminate) {
    const lowAlpha = new Float32Array(ln);
    for (let i = 0; i < ln; i++) {
      if (!band[i]) { lowAlpha[i] = p[i]; continue; }
      const v = a[0][i] * guide[0][i] + a[1][i] * guide[1][i] + a[2][i] * guide[2][i] + b[i];
      lowAlpha[i] = blend(p[i], v < 0 ? 0 : v > 1 ? 1 : v);
    }
    const { f, bg } = foregroundMeans(guide, lowAlpha, lw, lh, radiusPx(params.fg_radius_large, longLow),
      radiusPx(params.fg_radius_small, longLow));
    for (let y = 0; y < height; y++) {
      const y0 = yTaps.i0[y] * lw, y1 = yTaps.i1[y] * lw, fy = yTaps.f[y];
      for (let x = 0; x < width; x++) {
        const o = y * width + x;
        const al = alpha[o];
        if (!(al > PARTIAL_LOW && al < PARTIAL_HIGH)) continue;
        decontaminated++;
        const x0 = xTaps.i0[x], x1 = xTaps.i1[x], fx = xTaps.f[x];
        const up = (plane) => (1 - fy) * ((1 - fx) * plane[y0 + x0] + fx * plane[y0 + x1])
          + fy * ((1 - fx) * plane[y1 + x0] + fx * plane[y1 + x1]);
        for (let c = 0; c < 3; c++) {
          const fc = up(f[c]), bc = up(bg[c]), image = rgba[o * 4 + c] / 255;
          const v = fc + al * (image - al * fc - (1 - al) * bc);
          rgba[o * 4 + c] = Math.floor((v < 0 ? 0 : v > 1 ? 1 : v) * 255 + 0.5);
        }
      }
    }
  }
  return { workScale: s, workWidth: lw, workHeight: lh, radius: r, bandPixels, decontaminated };
}

/** Trust the filter where the model is unsure: weight 4α(1 − α) (1 at α = 0.5, 0 at 0 and 1). */
const blend = (model, filtered) => model + 4 * model * (1 - model) * (filtered - model);

/** A radius given as a fraction of the work image's long side, in work pixels (at least 1). */
function radiusPx(fraction, longSide) {
  return Math.max(1, Math.floor(fraction * longSide + 0.5));
}

/** Area means over s×s blocks of the RGB (scaled to [0, 1]) and of the mask. */
function downscale(rgba, alpha, width, height, s, lw, lh) {
  const ln = lw * lh;
  const sums = [new Float64Array(ln), new Float64Array(ln), new Float64Array(ln), new Float64Array(ln)];
  for (let y = 0; y < height; y++) {
    const row = Math.floor(y / s) * lw;
    for (let x = 0; x < width; x++) {
      const i = row + Math.floor(x / s), o = y * width + x, q = o * 4;
      sums[0][i] += rgba[q]; sums[1][i] += rgba[q + 1]; sums[2][i] += rgba[q + 2]; sums[3][i] += alpha[o];
    }
  }
  const guide = [new Float32Array(ln), new Float32Array(ln), new Float32Array(ln)];
  const p = new Float32Array(ln);
  for (let ly = 0; ly < lh; ly++) {
    const ch = Math.min(s, height - ly * s);
    for (let lx = 0; lx < lw; lx++) {
      const count = ch * Math.min(s, width - lx * s), i = ly * lw + lx;
      for (let c = 0; c < 3; c++) guide[c][i] = sums[c][i] / count / 255;
      p[i] = sums[3][i] / count;
    }
  }
  return { guide, p };
}

/** Bilinear taps from work pixels (centred at (j + 0.5)·s − 0.5) to photo pixels 0..size−1. */
function taps(size, low, s) {
  const i0 = new Int32Array(size), i1 = new Int32Array(size), f = new Float64Array(size);
  for (let x = 0; x < size; x++) {
    let u = (x + 0.5) / s - 0.5;
    u = u < 0 ? 0 : u > low - 1 ? low - 1 : u;
    i0[x] = Math.floor(u);
    i1[x] = Math.min(i0[x] + 1, low - 1);
    f[x] = u - i0[x];
  }
  return { i0, i1, f };
}

const product = (x, y) => {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * y[i];
  return out;
};

/** Colour guided filter at the work resolution: window-averaged coefficients a (3 planes) and b. */
function guidedCoefficients(guide, p, w, h, r, eps) {
  const n = w * h;
  const box = (src) => boxFilter(src, w, h, r);
  const mI = guide.map(box), mp = box(p);
  const mIp = guide.map((g) => box(product(g, p)));
  const pairs = [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [2, 2]];
  const mII = pairs.map(([c, d]) => box(product(guide[c], guide[d])));
  const a = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
  const b = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const cr = mIp[0][i] - mI[0][i] * mp[i], cg = mIp[1][i] - mI[1][i] * mp[i], cb = mIp[2][i] - mI[2][i] * mp[i];
    const rr = mII[0][i] - mI[0][i] * mI[0][i] + eps, rg = mII[1][i] - mI[0][i] * mI[1][i];
    const rb = mII[2][i] - mI[0][i] * mI[2][i], gg = mII[3][i] - mI[1][i] * mI[1][i] + eps;
    const gb = mII[4][i] - mI[1][i] * mI[2][i], bb = mII[5][i] - mI[2][i] * mI[2][i] + eps;
    // Inverse of the symmetric 3×3 covariance by its adjugate.
    const irr = gg * bb - gb * gb, irg = gb * rb - rg * bb, irb = rg * gb - gg * rb;
    const igg = rr * bb - rb * rb, igb = rb * rg - rr * gb, ibb = rr * gg - rg * rg;
    const det = rr * irr + rg * irg + rb * irb;
    a[0][i] = (irr * cr + irg * cg + irb * cb) / det;
    a[1][i] = (irg * cr + igg * cg + igb * cb) / det;
    a[2][i] = (irb * cr + igb * cg + ibb * cb) / det;
    b[i] = mp[i] - a[0][i] * mI[0][i] - a[1][i] * mI[1][i] - a[2][i] * mI[2][i];
  }
  return { a: a.map(box), b: box(b) };
}

/** Blur-fusion foreground (f) and background (bg) colour means, two passes, at the work resolution. */
function foregroundMeans(guide, alpha, w, h, rLarge, rSmall) {
  const n = w * h;
  const weighted = (planes, weight) => planes.map((plane) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = plane[i] * weight(i);
    return out;
  });
  const fg = (i) => alpha[i], bgw = (i) => 1 - alpha[i];
  const blurA = boxFilter(alpha, w, h, rLarge);
  const sumF = weighted(guide, fg).map((x) => boxFilter(x, w, h, rLarge));
  const sumB = weighted(guide, bgw).map((x) => boxFilter(x, w, h, rLarge));
  const fHat = [0, 1, 2].map(() => new Float32Array(n)), bHat = [0, 1, 2].map(() => new Float32Array(n));
  const f1 = [0, 1, 2].map(() => new Float32Array(n));
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < n; i++) {
      fHat[c][i] = sumF[c][i] / (blurA[i] + DIVISION_GUARD);
      bHat[c][i] = sumB[c][i] / ((1 - blurA[i]) + DIVISION_GUARD);
      const al = alpha[i], fh = fHat[c][i];
      const v = fh + al * (guide[c][i] - al * fh - (1 - al) * bHat[c][i]);
      f1[c][i] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  const blurA2 = boxFilter(alpha, w, h, rSmall);
  const sumF2 = weighted(f1, fg).map((x) => boxFilter(x, w, h, rSmall));
  const sumB2 = weighted(bHat, bgw).map((x) => boxFilter(x, w, h, rSmall));
  const f = [0, 1, 2].map(() => new Float32Array(n)), bg = [0, 1, 2].map(() => new Float32Array(n));
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < n; i++) {
      f[c][i] = sumF2[c][i] / (blurA2[i] + DIVISION_GUARD);
      bg[c][i] = sumB2[c][i] / ((1 - blurA2[i]) + DIVISION_GUARD);
    }
  }
  return { f, bg };
}

/** Mean over the (2r+1)² window with replicated borders: running sums, rows then columns. */
export function boxFilter(src, width, height, r) {
  const tmp = new Float32Array(src.length), dst = new Float32Array(src.length);
  const n = 2 * r + 1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    let s = 0;
    for (let x = -r; x <= r; x++) s += src[row + Math.min(width - 1, Math.max(0, x))];
    for (let x = 0; x < width; x++) {
      tmp[row + x] = s / n;
      s += src[row + Math.min(width - 1, x + r + 1)] - src[row + Math.max(0, x - r)];
    }
  }
  for (let x = 0; x < width; x++) {
    let s = 0;
    for (let y = -r; y <= r; y++) s += tmp[Math.min(height - 1, Math.max(0, y)) * width + x];
    for (let y = 0; y < height; y++) {
      dst[y * width + x] = s / n;
      s += tmp[Math.min(height - 1, y + r + 1) * width + x] - tmp[Math.max(0, y - r) * width + x];
    }
  }
  return dst;
}
