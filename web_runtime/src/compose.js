// Pixels in and out of a cut: decode (with the pixel bound checked from the header first), the output image
// from photo + mask, and encoding.
import { ClearCutError } from './errors.js';
import { sniffImage } from './imaging.js';

/** The one default of `maxPixels`: ~8000×5000, where the RGBA copy, float mask and output stay < 1 GB. */
export const DEFAULT_MAX_PIXELS = 40_000_000;
const READBACK_ROWS = 256; // WebGL readback in bands: no second full-size copy of a large photo

/** @param {number} width @param {number} height @param {number} maxPixels */
function checkBounds(width, height, maxPixels) {
  if (!(width > 0 && height > 0)) throw new ClearCutError('decode', `The image has invalid dimensions ${width}×${height}.`);
  if (width * height > maxPixels) {
    throw new ClearCutError('too-large', `The image is ${width}×${height} (${(width * height / 1e6).toFixed(1)} MP), above the ` +
      `${(maxPixels / 1e6).toFixed(1)} MP limit: downscale it first or raise maxPixels.`);
  }
}

/**
 * The photo as RGBA8, not premultiplied. Under partial or full transparency the RGB is what the file stores
 * (what Python's `Image.convert('RGB')` keeps, so the model sees what the reference sees) when the browser
 * can read it; see `storedColours`.
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
    if (source instanceof Blob && !isOpaque(rgba)) storedColours(bitmap, rgba);
    return { rgba, width, height };
  } finally {
    bitmap.close();
  }
}

function isOpaque(rgba) {
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] !== 255) return false;
  return true;
}

/**
 * A 2D canvas stores premultiplied pixels, so `getImageData` returns black under alpha 0 and coarse colours
 * under low alpha (Chromium 156, measured: alpha 3 → up to 42/255 off). WebGL uploads the unpremultiplied
 * bitmap as it is, so reading it back gives the file's own colours. Replaces the RGB of the not-opaque
 * pixels of `rgba` with them; without WebGL (or for a photo above its texture size) `rgba` stays as the
 * canvas gave it. Returns whether it could.
 * @param {ImageBitmap} bitmap decoded with premultiplyAlpha 'none' @param {Uint8ClampedArray} rgba
 */
function storedColours(bitmap, rgba) {
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(1, 1);
  /** @type {WebGLRenderingContext | null} */
  let gl = null;
  try {
    gl = /** @type {any} */ (canvas.getContext('webgl2') || canvas.getContext('webgl'));
    if (!gl) return false;
    const limit = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    if (width > limit || height > limit) return false;
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    gl.bindFramebuffer(gl.FRAMEBUFFER, gl.createFramebuffer());
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return false;
    const band = new Uint8Array(width * Math.min(READBACK_ROWS, height) * 4);
    const stored = new Uint8ClampedArray(rgba.length);
    for (let y = 0; y < height; y += READBACK_ROWS) {
      const rows = Math.min(READBACK_ROWS, height - y);
      gl.readPixels(0, y, width, rows, gl.RGBA, gl.UNSIGNED_BYTE, band); // texture row 0 = the image's top row
      stored.set(band.subarray(0, width * rows * 4), y * width * 4);
    }
    if (gl.getError() !== gl.NO_ERROR) return false;
    for (let p = 0; p < rgba.length; p += 4) {
      // only where the alpha agrees: a mismatch would mean the upload was not the same image
      if (rgba[p + 3] !== 255 && stored[p + 3] === rgba[p + 3]) { rgba[p] = stored[p]; rgba[p + 1] = stored[p + 1]; rgba[p + 2] = stored[p + 2]; }
    }
    return true;
  } catch {
    return false;
  } finally {
    gl?.getExtension('WEBGL_lose_context')?.loseContext(); // free the texture now, not at garbage collection
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
 * The output pixels. The alpha used is min(photo alpha, mask): what the photo already hid stays hidden, in
 * every output (cutout alpha, mask, colour background).
 * @param {Uint8ClampedArray} rgba photo @param {Float32Array} mask at the photo's size
 * @param {'cutout' | 'mask' | 'color'} output @param {number[] | null} colour background for `color` (and jpeg cutouts)
 */
export function compose(rgba, mask, width, height, output, colour) {
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, p = 0; i < mask.length; i++, p += 4) {
    const m = mask[i] <= 0 ? 0 : mask[i] >= 1 ? 1 : mask[i];
    const a = Math.min(m, rgba[p + 3] / 255);
    const a8 = Math.round(a * 255);
    if (output === 'mask') {
      out[p] = out[p + 1] = out[p + 2] = a8; out[p + 3] = 255;
    } else if (colour) {
      for (let c = 0; c < 3; c++) out[p + c] = rgba[p + c] * a + colour[c] * (1 - a); // the clamped array rounds
      out[p + 3] = 255;
    } else {
      out[p] = rgba[p]; out[p + 1] = rgba[p + 1]; out[p + 2] = rgba[p + 2]; out[p + 3] = a8;
    }
  }
  return new ImageData(out, width, height);
}

/**
 * The image in the asked format. A canvas that cannot encode a type silently gives PNG instead (WebKit has no
 * WebP encoder): that is refused with `unsupported-format`, never returned as the asked format.
 * @param {ImageData} image @param {'png' | 'webp' | 'jpeg'} format @param {number} [quality]
 */
export async function encode(image, format, quality) {
  const canvas = new OffscreenCanvas(image.width, image.height);
  canvas.getContext('2d').putImageData(image, 0, 0);
  const type = `image/${format}`;
  const blob = await canvas.convertToBlob({ type, quality: quality ?? 0.92 });
  if (blob.type !== type) {
    throw new ClearCutError('unsupported-format', `This browser cannot encode ${format.toUpperCase()} (its canvas ` +
      `gave ${blob.type || 'an untyped blob'}; WebKit/Safari has no WebP encoder): ask for format 'png' or 'jpeg' here.`);
  }
  return blob;
}
