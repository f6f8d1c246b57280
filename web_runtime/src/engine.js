// The engine interface: all the runners (runners.js) need from an inference library. engine_ort.js
// implements it on onnxruntime-web (WASM and WebGPU); another library (e.g. LiteRT.js) slots in by
// implementing the same three calls, with no change to the loader, the runners or the worker.

/**
 * A tensor owned by JavaScript, not by an engine's heap: feeds are read from it, outputs are copied into it,
 * so no engine object outlives a run.
 * @typedef {Object} Tensor
 * @property {string} type e.g. 'float32'
 * @property {Float32Array | ArrayBufferView} data
 * @property {number[]} dims
 */

/**
 * One loaded graph.
 * @typedef {Object} EngineSession
 * @property {(feeds: Record<string, Tensor>, outputNames: string[]) => Promise<Record<string, Tensor>>} run
 *   Runs the graph on `feeds` (keyed by graph input name); returns the outputs named in `outputNames`,
 *   copied out of the engine, and frees all the others.
 * @property {() => Promise<void>} release Frees the graph's weights and buffers; the session is unusable after.
 */

/**
 * @typedef {Object} SessionOptions
 * @property {Record<string, string>} [config] the manifest's `session_config` of this graph (settings the
 *   pipeline found it needs, e.g. folding weight-only dequantization)
 */

/**
 * An inference library set up for one backend.
 * @typedef {Object} Engine
 * @property {(bytes: Uint8Array, options: SessionOptions) => Promise<EngineSession>} createSession
 *   Loads a graph from its model file; rejects with a ClearCutError `backend` when the backend cannot run it.
 * @property {'wasm' | 'webgpu'} backend Where sessions run (an engine may fall back once, before its first session).
 * @property {string | null} fallbackReason Why the requested backend is not the one used, or null.
 * @property {number | null} threads WASM threads, null on other backends.
 * @property {string | null} threadsReason Why WASM runs on one thread (or fewer threads started), else null.
 */

// Remember the wasm memories an engine creates (emscripten imports its memory from JS) so that
// `cutter.memory()` can report heap growth; leak checks need it and nothing else exposes it. Installed when
// this module loads, i.e. before any engine is imported.
const wasmMemories = new Set();
const NativeMemory = WebAssembly.Memory;
function TrackedMemory(descriptor) {
  const memory = new NativeMemory(descriptor);
  wasmMemories.add(memory);
  return memory;
}
TrackedMemory.prototype = NativeMemory.prototype;
WebAssembly.Memory = /** @type {any} */ (TrackedMemory);

/** Bytes of all wasm memories created in this worker (they only grow). */
export function wasmHeapBytes() {
  let bytes = 0;
  for (const m of wasmMemories) bytes += m.buffer.byteLength;
  return bytes;
}

// The same for the workers onnxruntime's threaded build starts for its pthreads (named "em-pthread" by
// emscripten): how many were created and how many failed to load, so that `cutter.info` can tell when threads
// were asked for but did not come up.
const pthreads = { created: 0, failed: 0 };
if (typeof Worker !== 'undefined') {
  const NativeWorker = Worker;
  self.Worker = class extends NativeWorker {
    constructor(url, options) {
      super(url, options);
      if (options?.name !== 'em-pthread') return;
      pthreads.created++;
      this.addEventListener('error', () => { pthreads.failed++; }, { once: true });
    }
  };
}

/** onnxruntime's pthread workers in this worker so far. */
export const pthreadWorkers = () => ({ ...pthreads });
