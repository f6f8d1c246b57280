// ClearCut worker (module worker): routes the page's messages to the loader, the engine, the runner and the
// cut, and holds their state. Image bytes never leave this worker except back to the page.
//
// Messages in: {type: 'init' | 'cut' | 'memory', id, ...} answered by {id, result} or {id, error: {code, message}};
// {type: 'cancel', id} (no answer). Out, unasked: {type: 'progress', phase, loaded, total, ...}.
// There is no 'dispose' message: cutter.dispose() terminates the worker, which frees everything at once.
import { ClearCutError, toWire } from './errors.js';
import { wasmHeapBytes } from './engine.js';
import { createOrtEngine } from './engine_ort.js';
import { loadManifest, loadModel } from './loader.js';
import { createRunner } from './runners.js';
import { DEFAULT_MAX_PIXELS } from './compose.js';
import { cut } from './cut.js';

/** @typedef {import('./manifest').BundleManifest} BundleManifest */

const state = {
  /** @type {BundleManifest | null} */ manifest: null,
  /** @type {import('./runners').Runner | null} */ runner: null,
  maxPixels: DEFAULT_MAX_PIXELS,
  /** ids of the jobs the page gave up on */ cancelled: new Set(),
  /** @type {AbortController | null} aborts the model download of 'init' */ loading: null,
};

const post = (msg, transfer = []) => self.postMessage(msg, transfer);
const progress = (p) => post({ type: 'progress', ...p });

const handlers = {
  init,
  cut: ({ id, source, options }) => {
    if (!state.runner) throw new ClearCutError('state', 'The cutter is not ready (still loading, or its loading failed).');
    return cut({ source, options, manifest: state.manifest, runner: state.runner, maxPixels: state.maxPixels,
      isCancelled: () => state.cancelled.has(id) });
  },
  memory: async () => ({ result: wasmHeapBytes() }),
};

self.onmessage = async ({ data: msg }) => {
  if (msg.type === 'cancel') {
    state.cancelled.add(msg.id);
    if (msg.id === 'init') state.loading?.abort();
    return;
  }
  const handler = handlers[msg.type];
  try {
    if (!handler) throw new ClearCutError('internal', `Unknown worker message "${msg.type}".`);
    const { result, transfer } = await handler(msg);
    post({ id: msg.id, result }, transfer);
  } catch (err) {
    post({ id: msg.id, error: toWire(err) });
  } finally {
    state.cancelled.delete(msg.id);
    state.runner?.idle(); // after the answer went out: a staged runner prepares the next cut's first stage
  }
};

async function init({ manifestUrl, variant, backend, maxPixels, numThreads, warmup }) {
  state.maxPixels = maxPixels || DEFAULT_MAX_PIXELS;
  state.loading = new AbortController();
  const { signal } = state.loading;
  const url = new URL(manifestUrl, self.location.href).href;
  const manifest = await loadManifest(url, signal);
  const name = variant || manifest.default_variant;
  const entry = manifest.variants[name];
  if (!entry) {
    throw new ClearCutError('variant', `Variant "${name}" is not in ${url}; available: ${Object.keys(manifest.variants).join(', ')}.`);
  }
  const base = new URL('.', url).href;
  const engine = await createOrtEngine({ manifest, variant: entry, base, backend, numThreads });
  const parts = entry.stages || [entry];
  const files = await loadModel(parts, base, { signal, onProgress: progress });
  const total = files.reduce((sum, f) => sum + f.length, 0);
  progress({ phase: 'session', loaded: total, total });
  const runner = await createRunner({ engine, manifest, parts, files, staged: !!entry.stages, onProgress: progress });
  if (warmup !== false) await runner.warmUp();
  Object.assign(state, { manifest, runner, loading: null });
  return {
    result: {
      variant: name, backend: engine.backend, fallbackReason: engine.fallbackReason, threads: engine.threads,
      crossOriginIsolated: self.crossOriginIsolated, model: manifest.model, inputSize: manifest.preprocessing.input_size,
      stages: entry.stages ? entry.stages.map((s) => s.name) : null,
    },
  };
}
