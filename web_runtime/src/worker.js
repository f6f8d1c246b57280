// ClearCut worker (module worker): routes the page's messages to the loader, the engine, the runner and the
// cut, and holds their state. Image bytes never leave this worker except back to the page.
//
// Messages in: {type: 'init' | 'cut' | 'warmup' | 'memory', id, ...} answered by {id, result} or {id, error: {code, message}};
// {type: 'cancel', id} (no answer). Out, unasked: {type: 'progress', phase, loaded, total, ...}; a cut asked with
// options.progress also reports its steps as {type: 'progress', id, phase: 'cut', step, loaded, total}.
// There is no 'dispose' message: cutter.dispose() terminates the worker, which frees everything at once.
// Once loaded it posts {type: 'ready', version} (boot.js waits for it, and compares the version with its own).
import { ClearCutError, toWire } from './errors.js';
import { wasmHeapBytes } from './engine.js';
import { createOrtEngine } from './engine_ort.js';
import { loadManifest, loadModel, loadModuleGraph, runtimeFiles } from './loader.js';
import { createRunner } from './runners.js';
import { DEFAULT_MAX_PIXELS } from './compose.js';
import { cut } from './cut.js';
import { probeDifference, probeInput } from './probe.js';
import { keepManifest } from './store.js';
import { VERSION } from './version.js';

/** @typedef {import('./manifest').BundleManifest} BundleManifest */

const state = {
  /** @type {BundleManifest | null} */ manifest: null,
  /** @type {import('./runners').Runner | null} */ runner: null,
  maxPixels: DEFAULT_MAX_PIXELS,
  /** ids of the jobs the page gave up on */ cancelled: new Set(),
  /** @type {AbortController | null} aborts the model download of 'init' */ loading: null,
  /** cuts received so far: a warm-up asked after the first one is skipped (that cut was the warm-up) */ cuts: 0,
};

const post = (msg, transfer = []) => self.postMessage(msg, transfer);
const progress = (p) => post({ type: 'progress', ...p });

const handlers = {
  init,
  cut: ({ id, source, options }) => {
    state.cuts++;
    if (!state.runner) throw new ClearCutError('state', 'The cutter is not ready (still loading, or its loading failed).');
    const onStep = options.progress ? (step, loaded, total) => progress({ id, phase: 'cut', step, loaded, total }) : undefined;
    return cut({ source, options, manifest: state.manifest, runner: state.runner, maxPixels: state.maxPixels,
      isCancelled: () => state.cancelled.has(id), onStep });
  },
  // One run on a blank input, asked by the page once createCutter resolved and no cut was asked yet; result:
  // whether it ran (not when a cut got here first). A cut arriving meanwhile waits for it in the runner.
  warmup: async () => {
    if (state.cuts > 0 || !state.runner) return { result: false };
    return { result: await state.runner.warmUp() };
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

async function init({ manifestUrl, baseUrl, variant, backend, maxPixels, numThreads }) {
  state.maxPixels = maxPixels || DEFAULT_MAX_PIXELS;
  state.loading = new AbortController();
  const { signal } = state.loading;
  const url = new URL(manifestUrl, self.location.href).href;
  const { manifest, text, offline } = await loadManifest(url, signal);
  const name = variant || manifest.default_variant;
  const entry = manifest.variants[name];
  if (!entry) {
    throw new ClearCutError('variant', `Variant "${name}" is not in ${url}; available: ${Object.keys(manifest.variants).join(', ')}.`);
  }
  const base = baseUrl || new URL('.', url).href;
  const file = runtimeFiles(manifest, base, signal);
  let loaded = await load({ manifest, entry, base, file, signal, backend, numThreads });
  let fallbackReason = loaded.engine.fallbackReason;
  if (loaded.graph && loaded.engine.backend !== loaded.graph) {
    // the engine fell back to WASM while creating the session: WASM runs the variant's own graph
    await loaded.runner.release?.();
    loaded = await load({ manifest, entry, base, file, signal, backend: 'wasm', numThreads });
  } else if (loaded.probe && !loaded.probe.passed) {
    const rejected = loaded.probe;
    fallbackReason = `WebGPU gave a wrong result on the probe input (mean abs difference ${rejected.difference.toFixed(4)} ` +
      `from the expected alpha, more than the ${rejected.tolerance} allowed): running on WASM`;
    await loaded.runner.release?.();
    loaded = await load({ manifest, entry, base, file, signal, backend: 'wasm', numThreads });
    loaded.probe = rejected;
  }
  const { engine, runner } = loaded;
  // Everything this manifest needs is verified and cached: it becomes the one to fall back on offline.
  await file.stored();
  if (!offline) await keepManifest(url, text, manifest, base);
  Object.assign(state, { manifest, runner, loading: null });
  return {
    result: {
      variant: name, backend: engine.backend, fallbackReason, threads: engine.threads,
      threadsReason: engine.threadsReason, crossOriginIsolated: self.crossOriginIsolated, offline,
      model: manifest.model, inputSize: manifest.preprocessing.input_size,
      stages: entry.stages ? entry.stages.map((s) => s.name) : null,
      graph: loaded.graph ? `${name}:${loaded.graph}` : name,
      probe: loaded.probe,
    },
  };
}

/**
 * The engine, the model bytes of the graph it runs (the variant's, or the engine's own graph of it, from the same
 * container) and a runner; on an engine that has a probe for its graph (WebGPU), the probe's verdict.
 */
async function load({ manifest, entry, base, file, signal, backend, numThreads }) {
  const parts = entry.stages || [entry];
  const created = createOrtEngine({ manifest, variant: entry, file, backend, numThreads });
  const engineGraph = created.then((e) => (entry.engines?.[e.backend] ? e.backend : null), () => null);
  // onnxruntime, the model and the offline copies of this worker's modules load side by side
  const [engine, files, graph] = await Promise.all([
    created,
    loadModel(parts, base, { signal, onProgress: progress, engineGraph }),
    engineGraph,
    loadModuleGraph(file, manifest.runtime.worker),
  ]);
  const own = graph ? entry.engines[graph] : null;
  const runParts = own ? [{ ...entry, ...own }] : parts;
  const total = files.reduce((sum, f) => sum + f.length, 0);
  progress({ phase: 'session', loaded: total, total });
  const runner = await createRunner({ engine, manifest, parts: runParts, files, staged: !!entry.stages, onProgress: progress });
  let probe = null;
  if (own?.probe && engine.backend === graph) {
    const { input_size: size, mean, std } = manifest.preprocessing;
    progress({ phase: 'probe', loaded: 0, total: 1 });
    const { alpha } = await runner.run(probeInput(size, mean, std));
    const difference = probeDifference(alpha, size, own.probe);
    probe = { engine: graph, difference, tolerance: own.probe.tolerance, passed: difference <= own.probe.tolerance };
    progress({ phase: 'probe', loaded: 1, total: 1 });
  }
  return { engine, runner, graph, probe };
}

post({ type: 'ready', version: VERSION });
