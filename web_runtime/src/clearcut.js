// ClearCut: background removal entirely in the browser. Main-thread API; all work runs in a module worker
// (started by boot.js: directly, through a blob: trampoline when the bundle is on another origin, or from the
// Cache API offline).
import { ClearCutError, isAbort } from './errors.js';
import { startWorker } from './boot.js';
import { VERSION } from './version.js';

export { ClearCutError, VERSION };

/**
 * Load a model variant and return a cutter.
 * @param {import('./clearcut').CutterOptions} [options]
 * @returns {Promise<import('./clearcut').Cutter>}
 */
export async function createCutter(options = {}) {
  const page = document.baseURI;
  // baseUrl: the bundle's folder, for a runtime bundled into an app (or to point at a CDN): everything else
  // is resolved against it. Without it: the manifest next to the page, the worker next to this module.
  const baseUrl = options.baseUrl ? asFolder(new URL(options.baseUrl, page)) : null;
  const manifestUrl = new URL(options.manifestUrl || 'manifest.json', baseUrl || page).href;
  const workerUrl = new URL(options.workerUrl || (baseUrl ? 'worker.js' : new URL('./worker.js', import.meta.url)), baseUrl || page);
  const worker = await startWorker({ workerUrl, manifestUrl, baseUrl, signal: options.signal,
    abortError: () => abortError(options.signal), bundled: !baseUrl && !options.workerUrl });
  const pending = new Map();
  let nextId = 1;
  let disposed = false;

  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === 'progress') { options.onProgress?.(msg); return; }
    const job = pending.get(msg.id);
    if (!job) return; // a cancelled job's late answer
    pending.delete(msg.id);
    if (msg.error) job.reject(new ClearCutError(msg.error.code, msg.error.message));
    else job.resolve(msg.result);
  };
  worker.onerror = (event) => {
    const err = new ClearCutError('worker', `The ClearCut worker failed: ${event.message || 'script error'}`);
    for (const job of pending.values()) job.reject(err);
    pending.clear();
  };

  /** @param {string} type @param {object} [payload] @param {Transferable[]} [transfer] @param {AbortSignal} [signal]
   * @param {number | string} [id] */
  function call(type, payload = {}, transfer = [], signal = undefined, id = nextId++) {
    if (disposed) return Promise.reject(new ClearCutError('state', 'This cutter was disposed.'));
    return new Promise((resolve, reject) => {
      if (signal?.aborted) { reject(abortError(signal)); return; }
      const onAbort = () => {
        if (!pending.has(id)) return;
        pending.delete(id);
        worker.postMessage({ type: 'cancel', id });
        reject(abortError(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (fn) => (value) => { signal?.removeEventListener('abort', onAbort); fn(value); };
      pending.set(id, { resolve: done(resolve), reject: done(reject) });
      worker.postMessage({ type, id, ...payload }, transfer);
    });
  }

  let info;
  try {
    info = await call('init', {
      manifestUrl, baseUrl, variant: options.variant, backend: options.backend || 'wasm',
      maxPixels: options.maxPixels, numThreads: options.numThreads, warmup: options.warmup,
    }, [], options.signal, 'init');
  } catch (err) {
    worker.terminate();
    throw err;
  }

  return {
    info,
    async cut(input, cutOptions = {}) {
      const { signal, ...rest } = cutOptions;
      const { source, transfer } = await toTransferable(input, signal);
      const result = await call('cut', { source, options: rest }, transfer, signal);
      if (cutOptions.timing) Object.assign(cutOptions.timing, result.timing);
      return result.image || result.blob;
    },
    memory() { return call('memory'); },
    // Terminating the worker frees the model, the sessions and the WASM heap at once: nothing to ask it first.
    dispose() {
      if (disposed) return;
      disposed = true;
      worker.terminate();
      for (const job of pending.values()) job.reject(new ClearCutError('state', 'This cutter was disposed.'));
      pending.clear();
    },
  };
}

/** A folder URL (ending in `/`): `https://cdn/x` and `https://cdn/x/` both mean the folder x. */
function asFolder(url) {
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  url.search = url.hash = '';
  return url.href;
}

/** The caller's own abort reason if it gave one (`abort(reason)`), else a ClearCutError `aborted`. */
function abortError(signal) {
  const reason = signal?.reason;
  // `abort()` without a reason sets a DOMException AbortError: that is no reason of the caller's own
  return reason instanceof Error && !isAbort(reason) ? reason : new ClearCutError('aborted', 'The operation was aborted.');
}

/** Turn any supported input into something the worker can take without copying pixels twice. */
async function toTransferable(input, signal) {
  if (input instanceof Blob) return { source: input, transfer: [] };
  if (input instanceof ArrayBuffer || ArrayBuffer.isView(input)) return { source: new Blob([/** @type {BlobPart} */ (input)]), transfer: [] };
  if (typeof ImageData !== 'undefined' && input instanceof ImageData) return { source: input, transfer: [] };
  if (typeof input === 'string' || input instanceof URL) {
    const url = new URL(input, document.baseURI);
    if (url.origin !== location.origin && url.protocol !== 'blob:' && url.protocol !== 'data:') {
      throw new ClearCutError('options', `Only same-origin image URLs are accepted (got ${url.origin}): fetch the image yourself and pass a Blob.`);
    }
    let res;
    try {
      res = await fetch(url, { signal });
    } catch (err) {
      if (isAbort(err)) throw abortError(signal);
      throw new ClearCutError('network', `Could not fetch the image ${url.href}: ${err.message}`);
    }
    if (!res.ok) throw new ClearCutError('network', `HTTP ${res.status} for the image ${url.href}.`);
    return { source: await res.blob(), transfer: [] };
  }
  if (typeof HTMLImageElement !== 'undefined' && input instanceof HTMLImageElement) {
    try { await input.decode(); } catch (err) {
      throw new ClearCutError('decode', `The <img> (${input.currentSrc || input.src}) could not be decoded.`);
    }
  }
  const drawable = ['ImageBitmap', 'HTMLImageElement', 'HTMLCanvasElement', 'OffscreenCanvas', 'HTMLVideoElement', 'VideoFrame', 'SVGImageElement']
    .some((name) => typeof globalThis[name] !== 'undefined' && input instanceof globalThis[name]);
  if (!drawable) {
    throw new ClearCutError('options', 'Unsupported input: pass a File/Blob, ImageBitmap, ImageData, <img>, <canvas> or a same-origin URL.');
  }
  const [width, height] = drawableSize(input) ?? [1, 1];
  if (!(width > 0 && height > 0)) {
    throw new ClearCutError('empty', `The ${input.constructor.name} is ${width}×${height} pixels: there is nothing to cut (draw or load an image first).`);
  }
  // A copy, so the caller's bitmap stays usable after we transfer ours to the worker.
  let bitmap;
  try {
    bitmap = await createImageBitmap(input);
  } catch (err) {
    throw new ClearCutError('decode', `The ${input.constructor.name} could not be read as an image: ${err.message}`);
  }
  return { source: bitmap, transfer: [bitmap] };
}

/** Pixel size of a drawable, by the property each kind has (an <img> or <video> before it loaded: 0×0);
 * null for an SVG <image>, whose size its document decides. */
function drawableSize(input) {
  if (typeof HTMLImageElement !== 'undefined' && input instanceof HTMLImageElement) return [input.naturalWidth, input.naturalHeight];
  if (typeof HTMLVideoElement !== 'undefined' && input instanceof HTMLVideoElement) return [input.videoWidth, input.videoHeight];
  if (typeof VideoFrame !== 'undefined' && input instanceof VideoFrame) return [input.displayWidth, input.displayHeight];
  if (typeof SVGImageElement !== 'undefined' && input instanceof SVGImageElement) return null;
  return [input.width, input.height];
}
