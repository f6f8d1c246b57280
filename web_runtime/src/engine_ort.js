// The engine interface (engine.js) on onnxruntime-web: WASM (SIMD, threads when cross-origin isolated) or
// WebGPU. Only the onnxruntime build of the chosen backend is imported.
import { ClearCutError } from './errors.js';

/** @typedef {import('./engine').Engine} Engine */
/** @typedef {import('./engine').Tensor} Tensor */
/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./manifest').Variant} Variant */

const MAX_THREADS = 4;

/**
 * @param {{manifest: BundleManifest, variant: Variant, base: string, backend?: 'wasm' | 'webgpu' | 'auto',
 *          numThreads?: number}} options `base`: the URL the manifest's runtime paths are relative to
 * @returns {Promise<Engine>}
 */
export async function createOrtEngine({ manifest, variant, base, backend, numThreads }) {
  const wanted = backend || 'wasm';
  let gpuReason = null;
  if (wanted === 'webgpu' || wanted === 'auto') {
    gpuReason = await webgpuProblem(variant, wanted === 'auto');
    if (wanted === 'webgpu' && gpuReason) throw new ClearCutError('backend', `WebGPU backend unavailable: ${gpuReason}.`);
  }
  const useGpu = wanted !== 'wasm' && gpuReason === null;
  const ort = await import(new URL(manifest.runtime.ort[useGpu ? 'webgpu' : 'wasm'], base).href);
  ort.env.wasm.wasmPaths = new URL(manifest.runtime.ort_dir + '/', base).href;
  ort.env.wasm.proxy = false;
  ort.env.wasm.numThreads = self.crossOriginIsolated
    ? Math.max(1, Math.min(numThreads || navigator.hardwareConcurrency || 1, MAX_THREADS)) : 1;

  let sessions = 0;
  /** @type {Engine} */
  const engine = {
    backend: useGpu ? 'webgpu' : 'wasm',
    fallbackReason: wanted === 'auto' && !useGpu ? gpuReason : null,
    get threads() { return engine.backend === 'wasm' ? ort.env.wasm.numThreads : null; },
    async createSession(bytes, { config } = {}) {
      // `extra`: the manifest's session config entries (e.g. session.disable_quant_qdq for int8w)
      const options = () => ({ graphOptimizationLevel: 'all', extra: { ...(config || {}) }, executionProviders: [engine.backend] });
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
      return wrap(ort, session);
    },
  };
  return engine;
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
async function webgpuProblem(variant, autoMode) {
  if (!variant.backends?.includes('webgpu')) return 'this bundle does not ship the WebGPU runtime';
  if (!('gpu' in navigator)) return 'navigator.gpu is missing (no WebGPU in this browser)';
  const adapter = await /** @type {any} */ (navigator).gpu.requestAdapter().catch(() => null);
  if (!adapter) return 'no WebGPU adapter';
  const fallback = adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter;
  if (autoMode && fallback) return 'only a software (fallback) WebGPU adapter';
  const missing = (variant.webgpu_features || []).filter((f) => !adapter.features.has(f));
  if (missing.length) return `the WebGPU adapter lacks ${missing.join(', ')}, which this variant needs (pick an fp32 or int8 variant)`;
  return null;
}
