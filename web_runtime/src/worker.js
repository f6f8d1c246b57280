// ClearCut inference worker (module worker). Fetches and verifies the model chunks, runs onnxruntime-web,
// and does all pixel work off the main thread. Image bytes never leave this worker except back to the page.
import { ClearCutError, sniffImage, resizeRGB8, resizeFloat, normalise } from './imaging.js';
import { refineEdges, wantRefine } from './refine.js';

const CACHE_NAME = 'clearcut-chunks-v1';
const FETCH_ATTEMPTS = 3;
const PARALLEL_CHUNKS = 3;

/** @type {any} */ let ort = null;
/** @type {any} */ let session = null;
/** @type {any} */ let manifest = null;
// A variant shipped as stages (graphs run in sequence; see runStages): their model bytes, the session
// options, and the first stage's session, created ahead of the next cut.
/** @type {any} */ let staged = null;
let settings = { maxPixels: 40_000_000 };
const cancelled = new Set();
let loadController = null;

// Remember the wasm memories onnxruntime creates (emscripten imports its memory from JS) so that
// `cutter.memory()` can report heap growth; leak checks need it and nothing else exposes it.
const wasmMemories = new Set();
const NativeMemory = WebAssembly.Memory;
function TrackedMemory(descriptor) {
  const memory = new NativeMemory(descriptor);
  wasmMemories.add(memory);
  return memory;
}
TrackedMemory.prototype = NativeMemory.prototype;
WebAssembly.Memory = TrackedMemory;

const post = (msg, transfer = []) => self.postMessage(msg, transfer);

self.onmessage = async (event) => {
  const msg = event.data;
  if (msg.type === 'cancel') { cancelled.add(msg.id); if (msg.id === 'init' && loadController) loadController.abort(); return; }
  try {
    if (msg.type === 'init') {
      const result = await init(msg);
      post({ id: msg.id, result });
    } else if (msg.type === 'cut') {
      const { result, transfer } = await cut(msg);
      post({ id: msg.id, result }, transfer);
    } else if (msg.type === 'memory') {
      post({ id: msg.id, result: wasmMemoryBytes() });
    } else if (msg.type === 'dispose') {
      if (session) await session.release();
      session = null;
      if (staged) await releaseStaged();
      post({ id: msg.id, result: true });
    }
  } catch (err) {
    post({ id: msg.id, error: { code: err.code || (err.name === 'AbortError' ? 'aborted' : 'internal'), message: err.message || String(err) } });
  } finally {
    cancelled.delete(msg.id);
    // After the answer went out: create the staged variant's first session for the next cut.
    if (msg.type === 'cut' && staged && !staged.next && !staged.busy) staged.next = createStage(0).catch((err) => ({ error: err }));
  }
};

function wasmMemoryBytes() {
  let bytes = 0;
  for (const m of wasmMemories) bytes += m.buffer.byteLength;
  return bytes;
}

async function init({ manifestUrl, variant, backend, maxPixels, numThreads, warmup }) {
  if (maxPixels) settings.maxPixels = maxPixels;
  loadController = new AbortController();
  const signal = loadController.signal;
  const res = await fetchWithRetry(manifestUrl, { cache: 'no-cache', signal }, 'the bundle manifest');
  manifest = await res.json();
  const name = variant || manifest.default_variant;
  const entry = manifest.variants[name];
  if (!entry) {
    throw new ClearCutError('variant', `Variant "${name}" is not in ${manifestUrl}; available: ${Object.keys(manifest.variants).join(', ')}.`);
  }
  const base = new URL('.', new URL(manifestUrl, self.location.href)).href;
  const wanted = backend || 'wasm';
  let gpuReason = null;
  let useGpu = false;
  if (wanted === 'webgpu' || wanted === 'auto') {
    gpuReason = await webgpuProblem(entry, wanted === 'auto');
    useGpu = gpuReason === null;
    if (wanted === 'webgpu' && !useGpu) throw new ClearCutError('backend', `WebGPU backend unavailable: ${gpuReason}.`);
  }
  ort = await import(new URL(manifest.runtime.ort[useGpu ? 'webgpu' : 'wasm'], base).href);
  ort.env.wasm.wasmPaths = new URL(manifest.runtime.ort_dir + '/', base).href;
  ort.env.wasm.proxy = false;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(numThreads || navigator.hardwareConcurrency || 1, 4)) : 1;

  const parts = entry.stages || [entry];
  const download = { loaded: 0, total: parts.reduce((sum, p) => sum + p.bytes, 0) };
  const modelBytes = [];
  for (const part of parts) modelBytes.push(await loadChunks(part, base, signal, download));
  post({ type: 'progress', phase: 'session', loaded: download.total, total: download.total });
  let used = useGpu ? 'webgpu' : 'wasm';
  let fallbackReason = wanted === 'auto' && !useGpu ? gpuReason : null;
  // Session config entries the pipeline found this graph needs (e.g. folding weight-only dequantization).
  const options = (part) => ({ graphOptimizationLevel: 'all', extra: { ...(part.session_config || {}) } });
  let first;
  try {
    first = await ort.InferenceSession.create(modelBytes[0], { ...options(parts[0]), executionProviders: [used] });
  } catch (err) {
    if (used !== 'webgpu' || wanted === 'webgpu') throw new ClearCutError('backend', `Could not start the ${used} session: ${err.message}`);
    fallbackReason = `WebGPU session failed (${err.message})`;
    used = 'wasm';
    first = await ort.InferenceSession.create(modelBytes[0], { ...options(parts[0]), executionProviders: ['wasm'] });
  }
  if (entry.stages) {
    // No warm-up: a staged variant exists because its sessions do not fit the heap together, so each cut
    // creates them one by one anyway (a warm-up would cost a whole cut: minutes at 1024² for RMBG-2.0).
    staged = { stages: entry.stages, bytes: modelBytes, options: (i) => ({ ...options(parts[i]), executionProviders: [used] }),
      next: Promise.resolve({ session: first, ms: 0 }), lock: Promise.resolve(), busy: 0 };
  } else {
    session = first;
    if (warmup !== false) await warmUp();
  }
  return {
    variant: name, backend: used, fallbackReason, threads: used === 'wasm' ? ort.env.wasm.numThreads : null,
    crossOriginIsolated: self.crossOriginIsolated, model: manifest.model, inputSize: manifest.preprocessing.input_size,
    stages: entry.stages ? entry.stages.map((s) => s.name) : null,
  };
}

async function createStage(index) {
  const started = performance.now();
  const created = await ort.InferenceSession.create(staged.bytes[index], staged.options(index));
  return { session: created, ms: performance.now() - started };
}

/**
 * Run a staged variant: stage by stage, create the session, run it, copy the outputs later stages read out
 * of the WASM heap, release the session, go on. Only one session (weights + arena) lives in the heap at a
 * time; the heap never shrinks, so its size is the largest stage's need. The next cut's first session is
 * created after this cut's answer went out (see onmessage), so a cut waits for the later stages' loads only
 * unless cuts come back to back.
 */
async function runStages(input, id) {
  const values = new Map([[manifest.output.input_name, input]]);
  const timing = [];
  let alpha = null;
  try {
    for (let i = 0; i < staged.stages.length; i++) {
      const stage = staged.stages[i];
      post({ type: 'progress', phase: 'stage', stage: stage.name, loaded: i, total: staged.stages.length });
      const pending = (i === 0 && staged.next) || createStage(i);
      if (i === 0) staged.next = null;
      let created = await pending;
      if (created.error) created = await createStage(i); // the ahead-of-time creation failed: try once more
      const { session: stageSession, ms: sessionMs } = created;
      let outputs;
      const started = performance.now();
      try {
        checkCancelled(id);
        outputs = await stageSession.run(Object.fromEntries(stage.inputs.map((n) => [n, values.get(n)])));
      } finally {
        await stageSession.release();
      }
      const runMs = performance.now() - started;
      const needed = new Set(staged.stages.slice(i + 1).flatMap((s) => s.inputs));
      for (const [name, tensor] of Object.entries(outputs)) {
        if (i === staged.stages.length - 1 && name === manifest.output.output_name) alpha = Float32Array.from(tensor.data);
        else if (needed.has(name)) values.set(name, new ort.Tensor(tensor.type, tensor.data.slice(), tensor.dims));
        tensor.dispose?.();
      }
      for (const name of [...values.keys()]) if (!needed.has(name) && values.get(name) !== input) values.delete(name);
      timing.push({ name: stage.name, sessionMs, runMs, heapBytes: wasmMemoryBytes() });
    }
  } finally {
    staged.next = null;
  }
  post({ type: 'progress', phase: 'stage', stage: null, loaded: staged.stages.length, total: staged.stages.length });
  return { alpha, timing };
}

async function releaseStaged() {
  const next = await staged.next?.catch(() => null);
  staged = null;
  await next?.session?.release();
}

/**
 * One run on a blank input while the page still waits for the model: onnxruntime's first run grows the
 * WASM heap, fills its arena and starts the thread pool (IS-Net int8 in Chromium: first run 5.0 s, then
 * 2.3 s), so without it the user's first cut would pay that.
 */
async function warmUp() {
  const [h, w] = manifest.preprocessing.input_size;
  post({ type: 'progress', phase: 'warmup', loaded: 0, total: 1 });
  const input = new ort.Tensor('float32', new Float32Array(3 * h * w), [1, 3, h, w]);
  await inferAlpha(input);
  input.dispose?.();
  post({ type: 'progress', phase: 'warmup', loaded: 1, total: 1 });
}

/** The single-graph session on one input tensor → the alpha at model size, copied out of the WASM heap. */
async function inferAlpha(input) {
  const outputs = await session.run({ [manifest.output.input_name]: input });
  const alpha = Float32Array.from(outputs[manifest.output.output_name].data); // copy out before release
  for (const t of Object.values(outputs)) t.dispose?.();
  return alpha;
}

async function webgpuProblem(entry, autoMode) {
  if (!entry.backends?.includes('webgpu')) return 'this bundle does not ship the WebGPU runtime';
  if (!('gpu' in navigator)) return 'navigator.gpu is missing (no WebGPU in this browser)';
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) return 'no WebGPU adapter';
  const fallback = adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter;
  if (autoMode && fallback) return 'only a software (fallback) WebGPU adapter';
  const missing = (entry.webgpu_features || []).filter((f) => !adapter.features.has(f));
  if (missing.length) return `the WebGPU adapter lacks ${missing.join(', ')}, which this variant needs (pick an fp32 or int8 variant)`;
  return null;
}

async function fetchWithRetry(url, init, what) {
  let lastError;
  for (let attempt = 1; attempt <= FETCH_ATTEMPTS; attempt++) {
    let res = null;
    try {
      res = await fetch(url, init);
    } catch (err) {
      if (err.name === 'AbortError') throw new ClearCutError('aborted', 'Model loading was aborted.');
      lastError = new ClearCutError('network', `Could not download ${what} (${url}): ${err.message}`);
    }
    if (res?.ok) return res;
    if (res) {
      lastError = new ClearCutError('network', `HTTP ${res.status} for ${what} (${url}).`);
      if (res.status < 500 && res.status !== 429) throw lastError; // not transient: retrying will not help
    }
    await new Promise((r) => setTimeout(r, 250 * attempt));
  }
  throw lastError;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function loadChunks(entry, base, signal, download = { loaded: 0, total: entry.bytes }) {
  const cache = await caches.open(CACHE_NAME);
  const model = new Uint8Array(entry.bytes);
  const offsets = [];
  let offset = 0;
  for (const c of entry.chunks) { offsets.push(offset); offset += c.bytes; }
  if (offset !== entry.bytes) throw new ClearCutError('manifest', 'The manifest chunk sizes do not add up to the variant size.');
  const progress = (delta, fromCache) => {
    download.loaded += delta;
    post({ type: 'progress', phase: 'download', loaded: download.loaded, total: download.total, fromCache });
  };
  let next = 0;
  const worker = async () => {
    while (next < entry.chunks.length) {
      const index = next++;
      const bytes = await loadChunk(entry.chunks[index], base, cache, signal, progress);
      model.set(bytes, offsets[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_CHUNKS, entry.chunks.length) }, worker));
  return model;
}

async function loadChunk(chunk, base, cache, signal, progress) {
  const url = new URL(chunk.path, base).href;
  const cached = await cache.match(url);
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (bytes.length === chunk.bytes && (await sha256Hex(bytes)) === chunk.sha256) {
      progress(bytes.length, true);
      return bytes;
    }
    await cache.delete(url); // a damaged cache entry is dropped and fetched again
  }
  let lastError;
  for (let attempt = 1; attempt <= FETCH_ATTEMPTS; attempt++) {
    let counted = 0;
    try {
      const res = await fetch(url, { cache: 'no-store', signal });
      if (!res.ok) throw new ClearCutError(res.status >= 500 || res.status === 429 ? 'network' : 'missing',
        `HTTP ${res.status} for model chunk ${chunk.path}.`);
      const bytes = new Uint8Array(chunk.bytes);
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (counted + value.length > chunk.bytes) {
          await reader.cancel();
          throw new ClearCutError('integrity', `Model chunk ${chunk.path} is larger than the ${chunk.bytes} bytes the manifest lists: refused.`);
        }
        bytes.set(value, counted);
        counted += value.length;
        progress(value.length, false);
      }
      if (counted !== chunk.bytes) {
        throw new ClearCutError('network', `Model chunk ${chunk.path} was truncated (${counted} of ${chunk.bytes} bytes).`);
      }
      const actual = await sha256Hex(bytes);
      if (actual !== chunk.sha256) {
        throw new ClearCutError('integrity', `Model chunk ${chunk.path} failed its integrity check (sha256 ${actual}, expected ${chunk.sha256}): ` +
          'the file on the server is corrupt or was altered. It was not used or cached; redeploy the bundle.');
      }
      await cache.put(url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } })).catch(() => {});
      return bytes;
    } catch (err) {
      progress(-counted, false);
      if (err.name === 'AbortError') throw new ClearCutError('aborted', 'Model loading was aborted.');
      if (err.code === 'integrity' || err.code === 'missing') throw err;
      lastError = err instanceof ClearCutError ? err : new ClearCutError('network', `Could not download model chunk ${chunk.path}: ${err.message}`);
    }
    await new Promise((r) => setTimeout(r, 300 * attempt));
  }
  throw lastError;
}

function checkCancelled(id) {
  if (cancelled.has(id)) throw new ClearCutError('aborted', 'The cut was aborted.');
}

function checkBounds(width, height) {
  if (!(width > 0 && height > 0)) throw new ClearCutError('decode', `The image has invalid dimensions ${width}×${height}.`);
  if (width * height > settings.maxPixels) {
    throw new ClearCutError('too-large', `The image is ${width}×${height} (${(width * height / 1e6).toFixed(1)} MP), above the ` +
      `${(settings.maxPixels / 1e6).toFixed(1)} MP limit: downscale it first or raise maxPixels.`);
  }
}

async function decode(source) {
  if (source instanceof ImageData) {
    checkBounds(source.width, source.height);
    return { rgba: source.data, width: source.width, height: source.height };
  }
  let bitmap = source;
  if (source instanceof Blob) {
    const head = new Uint8Array(await source.slice(0, 65536).arrayBuffer());
    const info = sniffImage(head);
    if (info.width !== undefined) checkBounds(info.width, info.height);
    try {
      bitmap = await createImageBitmap(source, { imageOrientation: 'from-image', colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    } catch (err) {
      throw new ClearCutError('decode', `The ${info.format.toUpperCase()} file could not be decoded (damaged or truncated?): ${err.message}`);
    }
  }
  try {
    checkBounds(bitmap.width, bitmap.height);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    return { rgba: data.data, width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close?.();
  }
}

function parseColor(color) {
  const m = /^#?([0-9a-f]{6})$/i.exec(color || '#ffffff') || /^#?([0-9a-f]{3})$/i.exec(color);
  if (!m) throw new ClearCutError('options', `Colour "${color}" is not #rrggbb.`);
  const hex = m[1].length === 3 ? m[1].replace(/./g, '$&$&') : m[1];
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

async function cut({ id, source, options }) {
  if (!session && !staged) throw new ClearCutError('state', 'The cutter is not ready (disposed or still loading).');
  const output = options.output || 'cutout';
  const format = options.format || 'png';
  if (!['cutout', 'mask', 'color'].includes(output)) throw new ClearCutError('options', `Unknown output "${output}".`);
  if (!['png', 'webp', 'jpeg', 'raw'].includes(format)) throw new ClearCutError('options', `Unknown format "${format}".`);
  const colour = output === 'color' || (output === 'cutout' && format === 'jpeg') ? parseColor(options.color) : null;

  const clock = [performance.now()];
  const { rgba, width, height } = await decode(source);
  clock.push(performance.now());
  checkCancelled(id);
  const pre = manifest.preprocessing;
  const [mh, mw] = pre.input_size;
  const rgb = resizeRGB8(rgba, width, height, mw, mh);
  const input = new ort.Tensor('float32', normalise(rgb, mw, mh, pre), [1, 3, mh, mw]);
  clock.push(performance.now());
  let alphaSmall, stageTiming = null;
  if (staged) {
    // one staged cut at a time: two would hold two sessions in the heap
    const own = staged;
    own.busy++;
    const run = own.lock.then(() => runStages(input, id));
    own.lock = run.catch(() => {});
    try {
      ({ alpha: alphaSmall, timing: stageTiming } = await run);
    } finally {
      own.busy--;
    }
  } else {
    alphaSmall = await inferAlpha(input);
  }
  clock.push(performance.now());
  input.dispose?.();
  checkCancelled(id);

  const alpha = resizeFloat(alphaSmall, mw, mh, width, height);
  if (wantRefine(options.refine, manifest.refine, width, height, pre.input_size)) refineEdges(alpha, rgba, width, height, manifest.refine);
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, p = 0; i < alpha.length; i++, p += 4) {
    const a = alpha[i] <= 0 ? 0 : alpha[i] >= 1 ? 1 : alpha[i];
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
  const image = new ImageData(out, width, height);
  clock.push(performance.now());
  // Where the time of a cut goes (ms): decode, resize+normalise, session.run, mask+refine+compose, encode.
  const stages = (encoded) => {
    if (encoded) clock.push(performance.now());
    const [decodeMs, preprocessMs, inferenceMs, postprocessMs, encodeMs = 0] = clock.slice(1).map((t, i) => t - clock[i]);
    const timing = { decodeMs, preprocessMs, inferenceMs, postprocessMs, encodeMs, totalMs: clock.at(-1) - clock[0] };
    // staged variants: inferenceMs includes each stage's session creation; per stage {name, sessionMs, runMs,
    // heapBytes: the WASM heap after it, which only grows}
    if (stageTiming) timing.stages = stageTiming;
    return timing;
  };
  if (format === 'raw') return { result: { image, timing: stages(false) }, transfer: [out.buffer] };
  const canvas = new OffscreenCanvas(width, height);
  canvas.getContext('2d').putImageData(image, 0, 0);
  const blob = await canvas.convertToBlob({ type: `image/${format}`, quality: options.quality ?? 0.92 });
  return { result: { blob, timing: stages(true) }, transfer: [] };
}
