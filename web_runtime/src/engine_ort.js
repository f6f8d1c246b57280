// The engine interface (engine.js) on onnxruntime-web: WASM (SIMD, threads when cross-origin isolated) or
// WebGPU. Only the onnxruntime build of the chosen backend is loaded, and only from bytes that matched the
// manifest's sha256 (loader.js): the entry module and the wasm build's .mjs run from blob: URLs of those bytes,
// the .wasm is handed over as bytes. So onnxruntime starts from the Cache API when the network is gone, and its
// pthread workers (which its .mjs starts from its own URL) are same-origin whatever origin served the bundle.
import { ClearCutError } from './errors.js';
import { pthreadWorkers } from './engine.js';

/** @typedef {import('./engine').Engine} Engine */
/** @typedef {import('./engine').Tensor} Tensor */
/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./manifest').Variant} Variant */

const MAX_THREADS = 4;
/** The emscripten build each onnxruntime-web entry module loads (`<name>.mjs` + `<name>.wasm` in `ort_dir`). */
const WASM_BUILDS = { wasm: 'ort-wasm-simd-threaded', webgpu: 'ort-wasm-simd-threaded.asyncify' };

/**
 * @param {{manifest: BundleManifest, variant: Variant, file: (path: string) => Promise<Uint8Array>,
 *          backend?: 'wasm' | 'webgpu' | 'auto', numThreads?: number}} options `file`: verified bytes of a
 *   path of the manifest's `files` (loader.js `runtimeFiles`)
 * @returns {Promise<Engine>}
 */
export async function createOrtEngine({ manifest, variant, file, backend, numThreads }) {
  const wanted = backend || 'wasm';
  let gpuReason = null;
  if (wanted === 'webgpu' || wanted === 'auto') {
    gpuReason = await webgpuProblem(variant, wanted === 'auto', manifest);
    if (wanted === 'webgpu' && gpuReason) throw new ClearCutError('backend', `WebGPU backend unavailable: ${gpuReason}.`);
  }
  const useGpu = wanted !== 'wasm' && gpuReason === null;
  const kind = useGpu ? 'webgpu' : 'wasm';
  const build = `${manifest.runtime.ort_dir}/${WASM_BUILDS[kind]}`;
  const [entry, mjs, wasm] = await Promise.all([manifest.runtime.ort[kind], `${build}.mjs`, `${build}.wasm`].map(file));
  const ort = await import(moduleUrl(entry));
  ort.env.wasm.wasmPaths = { mjs: moduleUrl(mjs) };
  ort.env.wasm.wasmBinary = wasm;
  ort.env.wasm.proxy = false;
  // onnxruntime's warnings (e.g. "Removing initializer … not used") reach the console at error level, where
  // pages' error trackers would report them on every visit: only its errors are logged
  ort.env.logLevel = 'error';
  const threading = wasmThreads(numThreads);
  ort.env.wasm.numThreads = threading.threads;

  let sessions = 0;
  /** @type {Engine} */
  const engine = {
    backend: useGpu ? 'webgpu' : 'wasm',
    fallbackReason: wanted === 'auto' && !useGpu ? gpuReason : null,
    get threads() { return engine.backend === 'wasm' ? ort.env.wasm.numThreads : null; },
    get threadsReason() {
      if (engine.backend !== 'wasm') return null;
      if (threading.reason) return threading.reason;
      // onnxruntime falls back to one thread by itself when it cannot share memory; its pthreads are workers
      const started = pthreadWorkers();
      return sessions && started.failed ? `${started.failed} of onnxruntime's ${started.created} thread workers failed to start` : null;
    },
    async createSession(bytes, { config } = {}) {
      // `extra`: the manifest's session config entries (e.g. session.disable_quant_qdq for int8w)
      const options = () => ({ graphOptimizationLevel: 'all', extra: { ...(config || {}) }, executionProviders: [engine.backend],
        logSeverityLevel: 3 });
      let session;
      try {
        session = await ort.InferenceSession.create(bytes, options());
      } catch (err) {
        // `auto` may still fall back to WASM while nothing runs on WebGPU yet; an explicit backend may not
        if (engine.backend !== 'webgpu' || wanted !== 'auto' || sessions > 0) {
          throw new ClearCutError('backend', `Could not start the ${engine.backend} session: ${err.message}`);
        }
        engine.fallbackReason = `WebGPU session failed (${err.message})`;
        engine.backend = 'wasm';
        session = await ort.InferenceSession.create(bytes, options());
      }
      sessions++;
      ort.env.wasm.wasmBinary = undefined; // compiled by now: the 11 MB of bytes need not stay in this worker's memory
      return wrap(ort, session);
    },
  };
  return engine;
}

/** A module URL for verified bytes; kept for the worker's lifetime (onnxruntime starts its pthreads from it). */
function moduleUrl(bytes) {
  return URL.createObjectURL(new Blob([bytes], { type: 'text/javascript' }));
}

/** WASM threads: as many as asked (default: the cores, at most MAX_THREADS), and why it is one when it is. */
function wasmThreads(asked) {
  const cores = navigator.hardwareConcurrency || 1;
  if (!self.crossOriginIsolated) {
    return { threads: 1, reason: 'the page is not cross-origin isolated: WebAssembly threads need SharedArrayBuffer, i.e. the ' +
      'page served with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp (or credentialless)' };
  }
  if (typeof SharedArrayBuffer === 'undefined') return { threads: 1, reason: 'this browser has no SharedArrayBuffer' };
  if (asked === 1) return { threads: 1, reason: 'numThreads: 1 was asked' };
  if (!asked && cores < 2) return { threads: 1, reason: 'the device reports one logical core' };
  return { threads: Math.max(1, Math.min(asked || cores, MAX_THREADS)), reason: null };
}

/** An onnxruntime session behind the engine interface: JS-owned tensors in and out. */
function wrap(ort, session) {
  return {
    async run(feeds, outputNames) {
      const inputs = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.type, t.data, t.dims);
      const outputs = await session.run(inputs);
      /** @type {Record<string, Tensor>} */
      const wanted = {};
      for (const [name, t] of Object.entries(outputs)) {
        // copy out of the WASM heap (or GPU download buffer) before onnxruntime reuses it
        if (outputNames.includes(name)) wanted[name] = { type: t.type, data: t.data.slice(), dims: [...t.dims] };
        t.dispose?.();
      }
      for (const t of Object.values(inputs)) t.dispose?.();
      return wanted;
    },
    release: () => session.release(),
  };
}

/** Why WebGPU cannot run this variant here, or null. */
async function webgpuProblem(variant, autoMode, manifest) {
  if (!manifest.runtime.ort.webgpu) return 'this bundle does not ship the WebGPU runtime';
  if (!variant.backends?.includes('webgpu')) {
    return 'this variant has no WebGPU graph (its int8 activations would run on the CPU): pick a coded variant, int8w or fp32';
  }
  if (!('gpu' in navigator)) return 'navigator.gpu is missing (no WebGPU in this browser)';
  const adapter = await /** @type {any} */ (navigator).gpu.requestAdapter().catch(() => null);
  if (!adapter) return 'no WebGPU adapter';
  const fallback = adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter;
  if (autoMode && fallback) return 'only a software (fallback) WebGPU adapter';
  const features = variant.engines?.webgpu?.webgpu_features ?? variant.webgpu_features ?? [];
  const missing = features.filter((f) => !adapter.features.has(f));
  if (missing.length) return `the WebGPU adapter lacks ${missing.join(', ')}, which this variant needs (pick an fp32 or int8 variant)`;
  return null;
}
