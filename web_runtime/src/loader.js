// Getting the bundle's bytes: the manifest (checked for shape; the last good one when the network is gone), the
// model chunks and the runtime/onnxruntime files (sha256-verified, kept in the Cache API by store.js), with one
// retry policy and download progress. A coded variant's chunks hold a weight container (ccw.js): decoded and
// verified here, and only then cached. Knows nothing of the inference engine.
import { CCW_FORMAT, decodeContainer } from './ccw.js';
import { ClearCutError, aborted, isAbort } from './errors.js';
import { CHUNK_CACHE, FILE_CACHE, cachedBytes, lastGoodManifest, openCache, putBytes, relativeImports, sha256Hex } from './store.js';

/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./manifest').Chunk} Chunk */
/** @typedef {{phase: 'download', loaded: number, total: number, fromCache: boolean} | {phase: 'decode', loaded: number, total: number}} DownloadProgress */

export const SCHEMA = 'clearcut.bundle/1';
const ATTEMPTS = 3;
const BACKOFF_MS = 250; // waits 250 ms, then 500 ms: enough for a CDN hiccup, short enough to fail fast
const PARALLEL_CHUNKS = 3;
const CONTENT_TYPES = { js: 'text/javascript', mjs: 'text/javascript', wasm: 'application/wasm' };

/** Failures worth another attempt: the network, a 5xx/429, a body cut short. */
const transientErrors = new WeakSet();
const transient = (err) => { transientErrors.add(err); return err; };

/**
 * The retry policy of every download: up to ATTEMPTS tries with a growing pause; errors that another try
 * cannot fix (HTTP 4xx, integrity, abort) end it at once.
 * @template T @param {string} what @param {() => Promise<T>} attempt @param {AbortSignal} signal
 * @returns {Promise<T>}
 */
async function retrying(what, attempt, signal, attempts = ATTEMPTS) {
  let lastError;
  for (let n = 1; n <= attempts; n++) {
    try {
      return await attempt();
    } catch (err) {
      if (isAbort(err) || signal.aborted) throw aborted('Model loading');
      if (err instanceof ClearCutError && !transientErrors.has(err)) throw err;
      lastError = err instanceof ClearCutError ? err
        : transient(new ClearCutError('network', `Could not download ${what}: ${err.message}. Check the connection and try again.`));
    }
    if (n < attempts) await pause(BACKOFF_MS * n, signal);
  }
  throw lastError;
}

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const onAbort = () => { clearTimeout(timer); reject(aborted('Model loading')); };
    const timer = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** @param {Response} res @param {string} what @param {import('./clearcut').ErrorCode} permanentCode */
function checkStatus(res, what, permanentCode) {
  if (res.ok) return;
  const retry = res.status >= 500 || res.status === 429;
  const err = new ClearCutError(retry ? 'network' : permanentCode, `HTTP ${res.status} for ${what}.`);
  throw retry ? transient(err) : err;
}

/**
 * Fetch, parse and check the bundle manifest. When the network fails (or the server answers 5xx) and a manifest
 * from this URL loaded completely before, that one is used (`offline`): the files it lists are in the Cache API.
 * A manifest the server does give is always the one used, so a newly published bundle takes over as soon as
 * the network is back.
 * @param {string} url absolute @param {AbortSignal} signal
 * @returns {Promise<{manifest: BundleManifest, text: string, offline: boolean}>}
 */
export async function loadManifest(url, signal) {
  const what = `the bundle manifest (${url})`;
  const kept = await lastGoodManifest(url);
  let fetched;
  try {
    // with a copy to fall back on, one try: offline, the page should not wait for retries first
    fetched = await retrying(what, async () => {
      const res = await fetch(url, { cache: 'no-cache', signal });
      checkStatus(res, what, 'network');
      return { text: await res.text(), type: res.headers.get('Content-Type') || 'no Content-Type' };
    }, signal, kept ? 1 : ATTEMPTS);
  } catch (err) {
    if (!kept || !transientErrors.has(err)) throw err;
    checkManifest(kept.manifest, url);
    return { manifest: kept.manifest, text: kept.text, offline: true };
  }
  const { text, type } = fetched;
  let manifest;
  try {
    manifest = JSON.parse(text);
  } catch {
    const start = JSON.stringify(text.trimStart().slice(0, 40));
    // an app's dev server (Vite, webpack) or a single-page app's fallback answers unknown paths with its page
    const html = /html/i.test(type) || /^"<(!doctype|html)/i.test(start);
    throw notAManifest(url, `it is not JSON (${type}, starting ${start})` + (html
      ? '; a web page came back, as an app\'s dev server or single-page fallback sends for a path it does not ' +
        'have: if clearcut.js was bundled into your app, pass baseUrl (the folder where the ClearCut bundle is ' +
        'served: manifest.json, worker.js, ort-*/)'
      : ''));
  }
  checkManifest(manifest, url);
  return { manifest, text, offline: false };
}

const notAManifest = (url, why) => new ClearCutError('manifest',
  `${url} is not a ClearCut bundle manifest: ${why}. Point manifestUrl at the manifest.json of a bundle built by ` +
  'web_runtime.build_bundle.');

/** The fields the runtime reads, so that a wrong or damaged manifest fails here with its URL, not mid-cut. */
function checkManifest(m, url) {
  const isObject = (x) => x !== null && typeof x === 'object' && !Array.isArray(x);
  const isNumbers = (x, n) => Array.isArray(x) && x.length === n && x.every((v) => typeof v === 'number');
  const isNames = (x) => Array.isArray(x) && x.every((v) => typeof v === 'string');
  if (!isObject(m)) throw notAManifest(url, 'it is JSON but not an object');
  if (m.schema !== SCHEMA) {
    throw notAManifest(url, m.schema === undefined ? 'it has no "schema"'
      : `its schema is ${JSON.stringify(m.schema)} and this runtime reads "${SCHEMA}" (rebuild the bundle with this runtime)`);
  }
  const pre = m.preprocessing, out = m.output;
  const checks = [
    [isObject(m.model) && typeof m.model.name === 'string', 'model.name'],
    [isObject(pre) && isNumbers(pre.input_size, 2) && pre.input_size.every((v) => v > 0), 'preprocessing.input_size'],
    [isObject(pre) && isNumbers(pre.mean, 3) && isNumbers(pre.std, 3), 'preprocessing.mean/std'],
    [isObject(pre) && (typeof pre.scale === 'number' || pre.scale === 'max'), 'preprocessing.scale'],
    [isObject(out) && typeof out.input_name === 'string' && typeof out.output_name === 'string', 'output.input_name/output_name'],
    [isObject(m.runtime) && isObject(m.runtime.ort) && typeof m.runtime.ort_dir === 'string', 'runtime.ort/ort_dir'],
    [isObject(m.files) && Object.values(m.files).every((f) => isObject(f) && typeof f.sha256 === 'string' && typeof f.bytes === 'number'), 'files'],
    [isObject(m.variants) && Object.keys(m.variants).length > 0, 'variants'],
    [isObject(m.variants) && typeof m.default_variant === 'string' && m.default_variant in m.variants, 'default_variant'],
  ];
  const isChunks = (c) => Array.isArray(c) && c.length > 0
    && c.every((x) => isObject(x) && typeof x.path === 'string' && typeof x.sha256 === 'string' && typeof x.bytes === 'number');
  for (const [name, v] of Object.entries(isObject(m.variants) ? m.variants : {})) {
    const staged = Array.isArray(v?.stages);
    const parts = staged ? v.stages : [v];
    checks.push([isObject(v) && typeof v.bytes === 'number', `variants.${name}.bytes`]);
    checks.push([parts.length > 0 && parts.every((p) => isObject(p) && isChunks(p.chunks) && typeof p.bytes === 'number'),
      `variants.${name}.${staged ? 'stages[].chunks' : 'chunks'}`]);
    if (v?.coded !== undefined) {
      checks.push([isObject(v.coded) && typeof v.coded.bytes === 'number' && typeof v.sha256 === 'string' && !staged,
        `variants.${name}.coded`]);
      if (isObject(v.coded) && v.coded.format !== CCW_FORMAT) {
        throw notAManifest(url, `variant ${name} is coded as ${JSON.stringify(v.coded.format)} and this runtime decodes "${CCW_FORMAT}" (rebuild the bundle with this runtime)`);
      }
    }
    if (staged) {
      checks.push([v.stages.every((s) => typeof s.name === 'string' && isNames(s.inputs) && isNames(s.outputs)),
        `variants.${name}.stages[].name/inputs/outputs`]);
    }
  }
  const missing = checks.filter(([ok]) => !ok).map(([, field]) => field);
  if (missing.length) throw notAManifest(url, `missing or malformed ${missing.join(', ')}`);
}

/**
 * Bytes of each model file of a variant (one, or one per stage), each assembled from its verified chunks. A coded
 * variant's chunks are its weight container: decoded into the graph's bytes, checked against the container's
 * and the manifest's sha256, and only then are its chunks cached; when the decode or a check fails, none of
 * them is kept (those already cached are deleted) and the load fails with `integrity`. `engineGraph` settles,
 * while the chunks download, on the engine whose own graph to decode from the container (the variant's
 * `engines` entry: e.g. WebGPU's float-activation graph), or null for the variant's graph.
 * @param {{bytes: number, sha256?: string, chunks?: Chunk[], coded?: import('./manifest').Coded,
 *          engines?: Record<string, import('./manifest').EngineGraph>}[]} parts
 *   the variant, or its stages @param {string} base URL the chunk paths are relative to
 * @param {{signal: AbortSignal, onProgress: (p: DownloadProgress) => void, engineGraph?: Promise<string | null>}} io
 * @returns {Promise<Uint8Array[]>}
 */
export async function loadModel(parts, base, { signal, onProgress, engineGraph }) {
  const cache = await openCache(CHUNK_CACHE);
  const download = { loaded: 0, total: parts.reduce((sum, p) => sum + (p.coded?.bytes ?? p.bytes), 0) };
  const report = (delta, fromCache) => {
    download.loaded += delta;
    onProgress({ phase: 'download', loaded: download.loaded, total: download.total, fromCache });
  };
  const store = (url, bytes) => putBytes(cache, url, bytes);
  const files = [];
  for (const part of parts) {
    if (!part.coded) {
      files.push(await loadFile(part.bytes, part.chunks ?? [], base, { cache, signal, report, store }));
      continue;
    }
    const verified = []; // [url, bytes] of chunks that matched their sha256, cached once the decode is verified
    const container = await loadFile(part.coded.bytes, part.chunks ?? [], base,
      { cache, signal, report, store: (url, bytes) => { verified.push([url, bytes]); } });
    const engine = await engineGraph;
    const graph = (engine && part.engines?.[engine]) || null;
    let model;
    try {
      model = await decodeContainer(container, graph || part, (p) => onProgress({ phase: 'decode', ...p }), graph?.graph ?? '');
    } catch (err) {
      await Promise.all((part.chunks ?? []).map((c) => cache?.delete(new URL(c.path, base).href).catch(() => {})));
      throw err;
    }
    await Promise.all(verified.map(([url, bytes]) => store(url, bytes)));
    files.push(model);
  }
  return files;
}

async function loadFile(bytes, chunks, base, io) {
  const model = new Uint8Array(bytes);
  const offsets = [];
  let offset = 0;
  for (const c of chunks) { offsets.push(offset); offset += c.bytes; }
  if (offset !== bytes) {
    throw new ClearCutError('manifest', `The manifest's chunk sizes (${offset} bytes) do not add up to the model's ${bytes} bytes: rebuild the bundle.`);
  }
  let next = 0;
  const worker = async () => {
    while (next < chunks.length) {
      const index = next++;
      model.set(await loadChunk(chunks[index], base, io), offsets[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_CHUNKS, chunks.length) }, worker));
  return model;
}

/** @param {Chunk} chunk @param {string} base
 * @param {{cache: Cache | null, signal: AbortSignal, report: (delta: number, fromCache: boolean) => void,
 *          store: (url: string, bytes: Uint8Array) => any}} io `store`: what to do with verified network bytes */
async function loadChunk(chunk, base, { cache, signal, report, store }) {
  const url = new URL(chunk.path, base).href;
  const cached = await cachedBytes(cache, url, chunk); // a damaged cache entry is dropped and fetched again
  if (cached) {
    report(cached.length, true);
    return cached;
  }
  const what = `model chunk ${chunk.path}`;
  const bytes = await retrying(what, async () => {
    let counted = 0;
    try {
      const res = await fetch(url, { cache: 'no-store', signal });
      checkStatus(res, what, 'missing');
      const body = new Uint8Array(chunk.bytes);
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (counted + value.length > chunk.bytes) {
          await reader.cancel();
          throw new ClearCutError('integrity', `Model chunk ${chunk.path} is larger than the ${chunk.bytes} bytes the manifest lists: refused.`);
        }
        body.set(value, counted);
        counted += value.length;
        report(value.length, false);
      }
      if (counted !== chunk.bytes) {
        throw transient(new ClearCutError('network', `Model chunk ${chunk.path} was truncated (${counted} of ${chunk.bytes} bytes).`));
      }
      const actual = await sha256Hex(body);
      if (actual !== chunk.sha256) {
        throw new ClearCutError('integrity', `Model chunk ${chunk.path} failed its integrity check (sha256 ${actual}, expected ${chunk.sha256}): ` +
          'the file on the server is corrupt or was altered. It was not used or cached; redeploy the bundle.');
      }
      return body;
    } catch (err) {
      report(-counted, false); // what this attempt downloaded does not count
      throw err;
    }
  }, signal);
  await store(url, bytes);
  return bytes;
}

/**
 * A loader of the bundle's runtime and onnxruntime files (the manifest's `files`): verified bytes from the
 * Cache API, else from the network (retried like chunks), checked against the manifest's sha256 and only then
 * cached. A file that does not match is an `integrity` error and is neither used nor cached. Each path is
 * loaded once per loader. Storing runs alongside the caller's work: `stored()` waits for it.
 * @param {BundleManifest} manifest @param {string} base URL the paths are relative to @param {AbortSignal} signal
 * @returns {((path: string) => Promise<Uint8Array>) & {stored: () => Promise<void>}}
 */
export function runtimeFiles(manifest, base, signal) {
  const cache = openCache(FILE_CACHE);
  const loads = new Map();
  const puts = [];
  const load = async (path) => {
    const entry = manifest.files[path];
    if (!entry) throw new ClearCutError('manifest', `The manifest lists no runtime file "${path}": rebuild the bundle.`);
    const url = new URL(path, base).href;
    const cached = await cachedBytes(await cache, url, entry);
    if (cached) return cached;
    const what = `runtime file ${path}`;
    const bytes = await retrying(what, async () => {
      const res = await fetch(url, { signal });
      checkStatus(res, what, 'missing');
      return new Uint8Array(await res.arrayBuffer());
    }, signal);
    const actual = await sha256Hex(bytes);
    if (bytes.length !== entry.bytes || actual !== entry.sha256) {
      throw new ClearCutError('integrity', `Runtime file ${path} failed its integrity check (${bytes.length} bytes, sha256 ${actual}; ` +
        `the manifest lists ${entry.bytes} bytes, sha256 ${entry.sha256}): the file on the server is corrupt or was altered. ` +
        'It was not used or cached; redeploy the bundle.');
    }
    puts.push(cache.then((c) => putBytes(c, url, bytes, CONTENT_TYPES[path.split('.').pop()])));
    return bytes;
  };
  const file = (path) => {
    if (!loads.has(path)) loads.set(path, load(path));
    return loads.get(path);
  };
  return Object.assign(file, { stored: async () => { await Promise.all(puts); } });
}

/**
 * Load (so: verify and cache) a module and everything it imports, e.g. the worker's module graph, which boot.js
 * starts from the Cache API when the network is gone.
 * @param {(path: string) => Promise<Uint8Array>} file a `runtimeFiles` loader @param {string} path
 * @param {Set<string>} [seen] @returns {Promise<void>}
 */
export async function loadModuleGraph(file, path, seen = new Set()) {
  if (seen.has(path)) return;
  seen.add(path);
  const source = new TextDecoder().decode(await file(path));
  await Promise.all(relativeImports(path, source).map(([, dep]) => loadModuleGraph(file, dep, seen)));
}
