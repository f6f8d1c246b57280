// Pure image helpers shared by the worker: format sniffing and a Pillow-exact separable resize.
// No DOM, no model constants: the model's numbers come from the bundle manifest.
import { ClearCutError } from './errors.js';

const u16be = (b, i) => (b[i] << 8) | b[i + 1];
const u16le = (b, i) => b[i] | (b[i + 1] << 8);
const u24le = (b, i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16);
const u32be = (b, i) => ((b[i] << 24) >>> 0) + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]);
const i32le = (b, i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24);
const ascii = (b, i, n) => String.fromCharCode(...b.subarray(i, i + n));

/**
 * Read the format and pixel dimensions from an image file's header, before any decoding, so that a
 * decompression bomb (huge dimensions in a tiny file) is refused without allocating its pixels.
 * @param {Uint8Array} b the first bytes of the file (64 KiB is plenty)
 * @returns {{format: string, width: number, height: number} | {format: string}}
 */
export function sniffImage(b) {
  if (b.length === 0) throw new ClearCutError('empty', 'The file is empty (0 bytes): choose an image file.');
  if (b.length >= 24 && b[0] === 0x89 && ascii(b, 1, 3) === 'PNG') {
    return { format: 'png', width: u32be(b, 16), height: u32be(b, 20) };
  }
  if (b.length >= 10 && ascii(b, 0, 4) === 'GIF8') return { format: 'gif', width: u16le(b, 6), height: u16le(b, 8) };
  if (b.length >= 26 && ascii(b, 0, 2) === 'BM') {
    return { format: 'bmp', width: Math.abs(i32le(b, 18)), height: Math.abs(i32le(b, 22)) };
  }
  if (b.length >= 30 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP') {
    const kind = ascii(b, 12, 4);
    if (kind === 'VP8 ') return { format: 'webp', width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
    if (kind === 'VP8L') {
      const bits = (b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24)) >>> 0;
      return { format: 'webp', width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
    }
    if (kind === 'VP8X') return { format: 'webp', width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 };
    return { format: 'webp' };
  }
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) return { format: 'jpeg', ...jpegSize(b) };
  if (b.length >= 12 && ascii(b, 4, 4) === 'ftyp') {
    const brand = ascii(b, 8, 4);
    if (!/^(avif|avis|mif1|msf1)/.test(brand)) {
      throw new ClearCutError('unsupported-format', `Unsupported image container (brand "${brand}"): use JPEG, PNG, WebP, GIF, BMP or AVIF.`);
    }
    return { format: 'avif', ...ispeSize(b) };
  }
  const head = new TextDecoder().decode(b.subarray(0, 256)).replace(/^\uFEFF/, '').trimStart().toLowerCase();
  if (head.startsWith('<')) {
    throw new ClearCutError('unsupported-format', 'SVG/XML images are not supported: export the drawing as PNG first.');
  }
  throw new ClearCutError('unsupported-format',
    'Not a recognised image file (the content is not JPEG, PNG, WebP, GIF, BMP or AVIF, whatever its name says).');
}

function jpegSize(b) {
  let i = 2;
  while (i + 9 < b.length) {
    if (b[i] !== 0xff) { i++; continue; }
    const marker = b[i + 1];
    if (marker === 0xff) { i++; continue; }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { i += 2; continue; }
    const isSOF = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isSOF) return { height: u16be(b, i + 5), width: u16be(b, i + 7) };
    if (marker === 0xda || marker === 0xd9) break;
    i += 2 + u16be(b, i + 2);
  }
  return {};
}

function ispeSize(b) {
  for (let i = 4; i + 16 <= b.length; i++) {
    if (b[i] === 0x69 && ascii(b, i, 4) === 'ispe') return { width: u32be(b, i + 8), height: u32be(b, i + 12) };
  }
  return {};
}

/**
 * Resampling coefficients of Pillow's antialiased BILINEAR filter (triangle, support scaled when reducing,
 * pixel centres at +0.5, weights normalised per output pixel): the same numbers as Pillow's precompute_coeffs.
 */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const starts = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      let t = Math.abs((x + xmin - center + 0.5) / filterscale);
      const w = t < 1 ? 1 - t : 0;
      weights[xx * ksize + x] = w;
      total += w;
    }
    if (total !== 0) for (let x = 0; x < xmax; x++) weights[xx * ksize + x] /= total;
    starts[xx] = xmin;
    counts[xx] = xmax;
  }
  return { starts, counts, weights, ksize };
}

const PRECISION_BITS = 22; // Pillow's fixed point for 8-bit images: 32 - 8 - 2
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

function fixedPoint(c) {
  const k = new Float64Array(c.weights.length);
  for (let i = 0; i < k.length; i++) {
    const w = c.weights[i] * ONE;
    k[i] = Math.trunc(w < 0 ? w - 0.5 : w + 0.5);
  }
  return k;
}

const clip8 = (ss) => (ss < 0 ? 0 : ss >= 256 * ONE ? 255 : Math.floor(ss / ONE));

/**
 * Resize the RGB channels of an RGBA8 image like Pillow's `Image.resize(size, BILINEAR)` on an RGB image:
 * horizontal pass then vertical pass, each rounded to 8 bits. Returns packed RGB (3 bytes per pixel).
 * @param {Uint8ClampedArray|Uint8Array} rgba @param {number} width @param {number} height
 * @param {number} outWidth @param {number} outHeight
 */
export function resizeRGB8(rgba, width, height, outWidth, outHeight) {
  // Packed RGB copy of the input.
  let src = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < src.length; i += 3, j += 4) { src[i] = rgba[j]; src[i + 1] = rgba[j + 1]; src[i + 2] = rgba[j + 2]; }
  let w = width;
  if (outWidth !== width) {
    const c = coefficients(width, outWidth);
    const k = fixedPoint(c);
    const dst = new Uint8Array(outWidth * height * 3);
    for (let y = 0; y < height; y++) {
      const row = y * width * 3;
      for (let xx = 0; xx < outWidth; xx++) {
        const base = xx * c.ksize, start = c.starts[xx], n = c.counts[xx];
        let s0 = HALF, s1 = HALF, s2 = HALF;
        for (let x = 0; x < n; x++) {
          const p = row + (start + x) * 3, kx = k[base + x];
          s0 += src[p] * kx; s1 += src[p + 1] * kx; s2 += src[p + 2] * kx;
        }
        const o = (y * outWidth + xx) * 3;
        dst[o] = clip8(s0); dst[o + 1] = clip8(s1); dst[o + 2] = clip8(s2);
      }
    }
    src = dst;
    w = outWidth;
  }
  if (outHeight !== height) {
    const c = coefficients(height, outHeight);
    const k = fixedPoint(c);
    const dst = new Uint8Array(w * outHeight * 3);
    const stride = w * 3;
    for (let yy = 0; yy < outHeight; yy++) {
      const base = yy * c.ksize, start = c.starts[yy], n = c.counts[yy];
      for (let xc = 0; xc < stride; xc++) {
        let s = HALF;
        for (let y = 0; y < n; y++) s += src[(start + y) * stride + xc] * k[base + y];
        dst[yy * stride + xc] = clip8(s);
      }
    }
    src = dst;
  }
  return src;
}

/**
 * Resize a single-channel float map like Pillow's mode "F" `resize(BILINEAR)` (float32 storage between passes).
 * @param {Float32Array} map @param {number} width @param {number} height
 * @param {number} outWidth @param {number} outHeight
 */
export function resizeFloat(map, width, height, outWidth, outHeight) {
  let src = map;
  let w = width;
  if (outWidth !== width) {
    const c = coefficients(width, outWidth);
    const dst = new Float32Array(outWidth * height);
    for (let y = 0; y < height; y++) {
      const row = y * width;
      for (let xx = 0; xx < outWidth; xx++) {
        const base = xx * c.ksize, start = c.starts[xx], n = c.counts[xx];
        let s = 0;
        for (let x = 0; x < n; x++) s += src[row + start + x] * c.weights[base + x];
        dst[y * outWidth + xx] = s;
      }
    }
    src = dst;
    w = outWidth;
  }
  if (outHeight !== height) {
    const c = coefficients(height, outHeight);
    const dst = new Float32Array(w * outHeight);
    for (let yy = 0; yy < outHeight; yy++) {
      const base = yy * c.ksize, start = c.starts[yy], n = c.counts[yy];
      const out = yy * w;
      for (let x = 0; x < w; x++) dst[out + x] = 0;
      for (let y = 0; y < n; y++) {
        const kw = c.weights[base + y], row = (start + y) * w;
        for (let x = 0; x < w; x++) dst[out + x] += src[row + x] * kw;
      }
    }
    src = dst;
  }
  return src === map ? new Float32Array(map) : src;
}

/**
 * Model input from packed RGB: x = (rgb / scale - mean) / std in NCHW float32, as the manifest says.
 * @param {Uint8Array} rgb @param {number} width @param {number} height
 * @param {{mean: number[], std: number[], scale: number|'max', channel_order: string, layout: string}} pre
 */
export function normalise(rgb, width, height, pre) {
  if (pre.channel_order !== 'RGB' || pre.layout !== 'NCHW') {
    throw new ClearCutError('manifest', `Unsupported preprocessing ${pre.channel_order}/${pre.layout} in the manifest.`);
  }
  let scale = pre.scale;
  if (scale === 'max') {
    let m = 0;
    for (let i = 0; i < rgb.length; i++) if (rgb[i] > m) m = rgb[i];
    scale = Math.max(m, 1e-6);
  }
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    // float32 arithmetic in the same order as numpy: (v / scale - mean) / std
    const mean = Math.fround(pre.mean[c]), std = Math.fround(pre.std[c]), s = Math.fround(scale);
    for (let i = 0; i < plane; i++) {
      out[c * plane + i] = Math.fround(Math.fround(Math.fround(rgb[i * 3 + c] / s) - mean) / std);
    }
  }
  return out;
}
