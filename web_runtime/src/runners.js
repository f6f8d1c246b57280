// Runners: a variant's graph(s) behind one interface, `run(input) → alpha` at the model's input size.
// A single-graph variant keeps one session; a staged variant (graphs run in sequence, because their
// sessions do not fit the WASM heap together) creates, runs and releases one stage session at a time.
import { ClearCutError, aborted } from './errors.js';
import { wasmHeapBytes } from './engine.js';

/** @typedef {import('./engine').Engine} Engine */
/** @typedef {import('./engine').EngineSession} EngineSession */
/** @typedef {import('./engine').Tensor} Tensor */
/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./manifest').Stage} Stage */
/** @typedef {{name: string, sessionMs: number, runMs: number, heapBytes: number}} StageTiming */

/**
 * @typedef {Object} Runner
 * @property {(input: Tensor, isCancelled?: () => boolean) => Promise<{alpha: Float32Array, stages: StageTiming[] | null}>} run
 *   The alpha map at the model's input size, and for staged variants the time of each stage.
 * @property {() => Promise<boolean>} warmUp One run on a blank input (a staged variant skips it, see below);
 *   whether it ran. Cuts that come meanwhile wait for it: two runs never share the session.
 * @property {() => void} idle Called when no cut is being answered: a staged runner creates the next cut's first session.
 * @property {() => Promise<void>} [release] Frees the session (a single-graph runner; the worker drops a runner whose
 *   engine failed its probe).
 */

/**
 * @param {{engine: Engine, manifest: BundleManifest, parts: Array<import('./manifest').Variant | Stage>,
 *          files: Uint8Array[], staged: boolean, onProgress: (p: object) => void}} options
 *   `parts`: the variant (one graph) or its stages, `files`: their model bytes in the same order
 * @returns {Promise<Runner>}
 */
export async function createRunner({ engine, manifest, parts, files, staged, onProgress }) {
  const open = (i) => engine.createSession(files[i], { config: parts[i].session_config });
  // The first session is created now in both cases: it is where a WebGPU failure falls back to WASM.
  const first = await open(0);
  return staged ? stagedRunner(manifest, /** @type {Stage[]} */ (parts), open, first, onProgress) : singleRunner(manifest, first, onProgress);
}

/** The output a graph must have, as Float32Array. */
function alphaOf(outputs, name) {
  const t = outputs[name];
  if (!t) throw new ClearCutError('manifest', `The model has no output "${name}" (the manifest's output.output_name): rebuild the bundle.`);
  return t.data instanceof Float32Array ? t.data : Float32Array.from(/** @type {any} */ (t.data));
}

/** @param {BundleManifest} manifest @param {EngineSession} session @returns {Runner} */
function singleRunner(manifest, session, onProgress) {
  let released = false;
  const { input_name: inputName, output_name: outputName } = manifest.output;
  const infer = async (input) => alphaOf(await session.run({ [inputName]: input }, [outputName]), outputName);
  /** @type {Promise<unknown> | null} the warm-up while it runs */
  let warming = null;
  return {
    async run(input) {
      while (warming) await warming.then(() => {}, () => {});
      return { alpha: await infer(input), stages: null };
    },
    /**
     * onnxruntime's first run grows the WASM heap, fills its arena and starts the thread pool (IS-Net int8
     * in Chromium: first run 5.0 s, then 2.3 s): done when the page has not asked for a cut yet, so that the
     * user's first cut does not pay it (worker.js decides when).
     */
    async warmUp() {
      const [h, w] = manifest.preprocessing.input_size;
      onProgress({ phase: 'warmup', loaded: 0, total: 1 });
      warming = infer({ type: 'float32', data: new Float32Array(3 * h * w), dims: [1, 3, h, w] });
      try {
        await warming;
      } finally {
        warming = null;
      }
      onProgress({ phase: 'warmup', loaded: 1, total: 1 });
      return true;
    },
    idle() {},
    async release() {
      if (!released) { released = true; await session.release(); }
    },
  };
}

/**
 * Stage by stage: create the session, run it, keep the outputs later stages read (copied out of the heap by
 * the engine), release the session, go on. Only one session (weights + arena) lives in the heap at a time;
 * the heap never shrinks, so its size is the largest stage's need. The next cut's first session is created
 * once this cut's answer went out (`idle`), so a cut waits for the later stages' loads only, unless cuts
 * come back to back. Cuts run one at a time: two would hold two sessions in the heap.
 * @param {BundleManifest} manifest @param {Stage[]} stages @param {(i: number) => Promise<EngineSession>} open
 * @param {EngineSession} first @returns {Runner}
 */
function stagedRunner(manifest, stages, open, first, onProgress) {
  const timed = async (i) => {
    const started = performance.now();
    const session = await open(i);
    return { session, ms: performance.now() - started };
  };
  /** @typedef {{session: EngineSession, ms: number} | {error: any}} Created */
  /** @type {Promise<Created> | null} */
  let next = Promise.resolve({ session: first, ms: 0 });
  let lock = Promise.resolve();
  let busy = 0;

  async function runStages(input, isCancelled) {
    const { input_name: inputName, output_name: outputName } = manifest.output;
    const values = new Map([[inputName, input]]);
    const timing = [];
    let alpha = null;
    try {
      for (let i = 0; i < stages.length; i++) {
        const stage = stages[i];
        onProgress({ phase: 'stage', stage: stage.name, loaded: i, total: stages.length });
        const pending = (i === 0 && next) || timed(i);
        if (i === 0) next = null;
        let created = await pending;
        if ('error' in created) created = await timed(i); // the ahead-of-time creation failed: try once more
        const last = i === stages.length - 1;
        const needed = new Set(stages.slice(i + 1).flatMap((s) => s.inputs));
        const wanted = stage.outputs.filter((n) => needed.has(n) || (last && n === outputName));
        let outputs;
        const started = performance.now();
        try {
          if (isCancelled?.()) throw aborted('The cut');
          outputs = await created.session.run(Object.fromEntries(stage.inputs.map((n) => [n, values.get(n)])), wanted);
        } finally {
          await created.session.release();
        }
        const runMs = performance.now() - started;
        if (last) alpha = alphaOf(outputs, outputName);
        for (const [name, tensor] of Object.entries(outputs)) if (needed.has(name)) values.set(name, tensor);
        for (const name of [...values.keys()]) if (!needed.has(name) && name !== inputName) values.delete(name);
        timing.push({ name: stage.name, sessionMs: created.ms, runMs, heapBytes: wasmHeapBytes() });
      }
    } finally {
      next = null;
    }
    onProgress({ phase: 'stage', stage: null, loaded: stages.length, total: stages.length });
    return { alpha, stages: timing };
  }

  return {
    async run(input, isCancelled) {
      busy++;
      const run = lock.then(() => runStages(input, isCancelled));
      lock = run.then(() => {}, () => {});
      try {
        return await run;
      } finally {
        busy--;
      }
    },
    // No warm-up: each cut creates the stage sessions one by one anyway, so a warm-up would cost a whole
    // cut (minutes at 1024² for RMBG-2.0) and buy nothing.
    async warmUp() { return false; },
    idle() {
      if (!next && !busy) next = timed(0).catch((error) => ({ error }));
    },
  };
}
