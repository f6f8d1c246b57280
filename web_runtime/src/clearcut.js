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
  let cutsAsked = 0;

  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === 'progress') {
      // a cut's own steps go to that cut's onProgress; loading, warm-up and stages to createCutter's
      if (msg.id === undefined) options.onProgress?.(msg);
      else pending.get(msg.id)?.onProgress?.(msg);
      return;
    }
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
   * @param {number | string} [id] @param {(p: object) => void} [onProgress] */
  function call(type, payload = {}, transfer = [], signal = undefined, id = nextId++, onProgress = undefined) {
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
      pending.set(id, { resolve: done(resolve), reject: done(reject), onProgress });
      worker.postMessage({ type, id, ...payload }, transfer);
    });
  }

  let info;
  try {
    info = await call('init', {
      manifestUrl, baseUrl, variant: options.variant, backend: options.backend || 'wasm',
      maxPixels: options.maxPixels, numThreads: options.numThreads,
    }, [], options.signal, 'init');
  } catch (err) {
    worker.terminate();
    throw err;
  }

  // Warm-up: onnxruntime's first run grows the WASM heap, fills its arena and starts its threads (IS-Net int8:
  // 5.0 s, later runs 2.3 s). It runs once createCutter has resolved, on a blank input, unless a cut was asked
  // first: that cut then is the warm-up, and nothing runs before it. The worker skips it too when a cut reached
  // it first; a cut asked while the warm-up runs waits for the rest of it (a run cannot be interrupted).
  if (options.warmup !== false) setTimeout(() => { if (!cutsAsked && !disposed) call('warmup').catch(() => {}); }, 0);

  /** @type {import('./clearcut').Cutter} */
  const cutter = {
    info,
    async cut(input, cutOptions = {}) {
      cutsAsked++;
      const { signal, onProgress, ...rest } = cutOptions;
      const { source, transfer } = await toTransferable(input, signal);
      const result = await call('cut', { source, options: { ...rest, progress: !!onProgress } }, transfer, signal, undefined, onProgress);
      if (cutOptions.timing) Object.assign(cutOptions.timing, result.timing);
      return result.image || result.blob;
    },
    cutMany(inputs, manyOptions = {}) {
      return cutMany(cutter, inputs, manyOptions);
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
  return cutter;
}

/**
 * Cut many inputs one after another through one cutter (so memory stays that of one cut), yielding each
 * result as it is ready. A failed input is yielded with its error and the batch goes on; only a cutter that
 * cannot cut any more (disposed: `state`, its worker died: `worker`) throws. `signal` stops the batch after
 * the photo being cut (that one is still yielded); the iteration then just ends.
 * @param {import('./clearcut').Cutter} cutter @param {Iterable<any> | AsyncIterable<any>} inputs
 * @param {import('./clearcut').CutManyOptions} options
 * @returns {AsyncGenerator<import('./clearcut').CutManyResult>}
 */
async function* cutMany(cutter, inputs, { onProgress, signal, ...cutOptions } = {}) {
  const total = typeof (/** @type {any} */ (inputs).length) === 'number' ? /** @type {any} */ (inputs).length : null;
  let completed = 0;
  let failed = 0;
  let index = 0;
  /** @param {number} i @param {string} name @param {string} step @param {number} photo */
  const report = (i, name, step, photo) => onProgress?.({ index: i, name, step, photo, completed, failed, total,
    overall: total ? Math.min(1, (completed + (step === 'done' || step === 'error' ? 0 : photo)) / total) : null });
  for await (const input of inputs) {
    if (signal?.aborted) return;
    const i = index++;
    const name = inputName(input, i);
    report(i, name, 'start', 0);
    let item;
    try {
      const result = await cutter.cut(input, { ...cutOptions,
        onProgress: (p) => report(i, name, p.step, p.loaded / p.total) });
      item = { index: i, name, ok: true, result };
    } catch (err) {
      if (err?.code === 'state' || err?.code === 'worker') throw err;
      item = { index: i, name, ok: false, error: err };
      failed++;
    }
    completed++;
    report(i, name, item.ok ? 'done' : 'error', 1);
    yield item;
    if (signal?.aborted) return;
  }
}

/** A File's path in its picked folder or its name, a URL's last segment, else `image-<n>`. */
function inputName(input, index) {
  if (typeof File !== 'undefined' && input instanceof File) return input.webkitRelativePath || input.name || `image-${index + 1}`;
  if (typeof input === 'string' || input instanceof URL) {
    try {
      const last = new URL(input, document.baseURI).pathname.split('/').pop();
      if (last) return decodeURIComponent(last);
    } catch {
      // not a URL (cut() says so for this item) or a stray % in it: the numbered name
    }
  }
  return `image-${index + 1}`;
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
