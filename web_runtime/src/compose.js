// Pixels in and out of a cut: decode (with the pixel bound checked from the header first), the output image
// from photo + mask, and encoding.
import { ClearCutError } from './errors.js';
import { sniffImage } from './imaging.js';

/** The one default of `maxPixels`: ~8000×5000, where the RGBA copy, float mask and output stay < 1 GB. */
export const DEFAULT_MAX_PIXELS = 40_000_000;

/** @param {number} width @param {number} height @param {number} maxPixels */
function checkBounds(width, height, maxPixels) {
  if (!(width > 0 && height > 0)) throw new ClearCutError('decode', `The image has invalid dimensions ${width}×${height}.`);
  if (width * height > maxPixels) {
    throw new ClearCutError('too-large', `The image is ${width}×${height} (${(width * height / 1e6).toFixed(1)} MP), above the ` +
      `${(maxPixels / 1e6).toFixed(1)} MP limit: downscale it first or raise maxPixels.`);
  }
}

/**
 * The photo as RGBA8 (as a 2D canvas gives it back).
 * @param {Blob | ImageBitmap | ImageData} source @param {number} maxPixels
 * @returns {Promise<{rgba: Uint8ClampedArray, width: number, height: number}>}
 */
export async function decode(source, maxPixels) {
  if (source instanceof ImageData) {
    checkBounds(source.width, source.height, maxPixels);
    return { rgba: source.data, width: source.width, height: source.height };
  }
  /** @type {ImageBitmap} */
  let bitmap;
  if (source instanceof Blob) {
    /** @type {{format: string, width?: number, height?: number}} */
    const info = sniffImage(new Uint8Array(await source.slice(0, 65536).arrayBuffer()));
    if (info.width !== undefined) checkBounds(info.width, info.height, maxPixels);
    try {
      bitmap = await createImageBitmap(source, { imageOrientation: 'from-image', colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    } catch (err) {
      throw new ClearCutError('decode', `The ${info.format.toUpperCase()} file could not be decoded (damaged or truncated?): ${err.message}`);
    }
  } else {
    bitmap = source;
  }
  try {
    const { width, height } = bitmap;
    checkBounds(width, height, maxPixels);
    const ctx = new OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, width, height).data;
    return { rgba, width, height };
  } finally {
    bitmap.close();
  }
}

/** @param {string | undefined} color `#rrggbb` or `#rgb` (default white) @returns {number[]} */
export function parseColor(color) {
  const m = /^#?([0-9a-f]{6})$/i.exec(color || '#ffffff') || /^#?([0-9a-f]{3})$/i.exec(color);
  if (!m) throw new ClearCutError('options', `Colour "${color}" is not #rrggbb.`);
  const hex = m[1].length === 3 ? m[1].replace(/./g, '$&$&') : m[1];
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

/**
 * The output pixels.
 * @param {Uint8ClampedArray} rgba photo @param {Float32Array} mask at the photo's size
 * @param {'cutout' | 'mask' | 'color'} output @param {number[] | null} colour background for `color` (and jpeg cutouts)
 */
export function compose(rgba, mask, width, height, output, colour) {
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, p = 0; i < mask.length; i++, p += 4) {
    const a = mask[i] <= 0 ? 0 : mask[i] >= 1 ? 1 : mask[i];
    const a8 = Math.round(a * 255);
    if (output === 'mask') {
      out[p] = out[p + 1] = out[p + 2] = a8; out[p + 3] = 255;
    } else if (colour) {
      for (let c = 0; c < 3; c++) out[p + c] = rgba[p + c] * a + colour[c] * (1 - a) + 0.5;
      out[p + 3] = 255;
    } else {
      out[p] = rgba[p]; out[p + 1] = rgba[p + 1]; out[p + 2] = rgba[p + 2]; out[p + 3] = a8;
    }
  }
  return new ImageData(out, width, height);
}

/** @param {ImageData} image @param {'png' | 'webp' | 'jpeg'} format @param {number} [quality] */
export function encode(image, format, quality) {
  const canvas = new OffscreenCanvas(image.width, image.height);
  canvas.getContext('2d').putImageData(image, 0, 0);
  return canvas.convertToBlob({ type: `image/${format}`, quality: quality ?? 0.92 });
}
