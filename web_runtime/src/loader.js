// Getting the bundle's bytes: the manifest (checked for shape) and the model chunks (sha256-verified, kept in
// the Cache API), with one retry policy and download progress. Knows nothing of the inference engine.
import { ClearCutError, aborted, isAbort } from './errors.js';

/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./manifest').Chunk} Chunk */
/** @typedef {{phase: 'download', loaded: number, total: number, fromCache: boolean}} DownloadProgress */

export const SCHEMA = 'clearcut.bundle/1';
const CACHE_NAME = 'clearcut-chunks-v1';
const ATTEMPTS = 3;
const BACKOFF_MS = 250; // waits 250 ms, then 500 ms: enough for a CDN hiccup, short enough to fail fast
const PARALLEL_CHUNKS = 3;

/** Failures worth another attempt: the network, a 5xx/429, a body cut short. */
const transientErrors = new WeakSet();
const transient = (err) => { transientErrors.add(err); return err; };

/**
 * The retry policy of every download: up to ATTEMPTS tries with a growing pause; errors that another try
 * cannot fix (HTTP 4xx, integrity, abort) end it at once.
 * @template T @param {string} what @param {() => Promise<T>} attempt @param {AbortSignal} signal
 * @returns {Promise<T>}
 */
async function retrying(what, attempt, signal) {
  let lastError;
  for (let n = 1; n <= ATTEMPTS; n++) {
    try {
      return await attempt();
    } catch (err) {
      if (isAbort(err) || signal.aborted) throw aborted('Model loading');
      if (err instanceof ClearCutError && !transientErrors.has(err)) throw err;
      lastError = err instanceof ClearCutError ? err
        : new ClearCutError('network', `Could not download ${what}: ${err.message}. Check the connection and try again.`);
    }
    if (n < ATTEMPTS) await pause(BACKOFF_MS * n, signal);
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
 * Fetch, parse and check the bundle manifest.
 * @param {string} url absolute @param {AbortSignal} signal @returns {Promise<BundleManifest>}
 */
export async function loadManifest(url, signal) {
  const what = `the bundle manifest (${url})`;
  const { text, type } = await retrying(what, async () => {
    const res = await fetch(url, { cache: 'no-cache', signal });
    checkStatus(res, what, 'network');
    return { text: await res.text(), type: res.headers.get('Content-Type') || 'no Content-Type' };
  }, signal);
  let manifest;
  try {
    manifest = JSON.parse(text);
  } catch {
    const start = JSON.stringify(text.trimStart().slice(0, 40));
    throw notAManifest(url, `it is not JSON (${type}, starting ${start})`);
  }
  checkManifest(manifest, url);
  return manifest;
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
    if (staged) {
      checks.push([v.stages.every((s) => typeof s.name === 'string' && isNames(s.inputs) && isNames(s.outputs)),
        `variants.${name}.stages[].name/inputs/outputs`]);
    }
  }
  const missing = checks.filter(([ok]) => !ok).map(([, field]) => field);
  if (missing.length) throw notAManifest(url, `missing or malformed ${missing.join(', ')}`);
}

/**
 * Bytes of each model file of a variant (one, or one per stage), each assembled from its verified chunks.
 * @param {{bytes: number, chunks?: Chunk[]}[]} parts the variant, or its stages @param {string} base URL the chunk paths are relative to
 * @param {{signal: AbortSignal, onProgress: (p: DownloadProgress) => void}} io
 * @returns {Promise<Uint8Array[]>}
 */
export async function loadModel(parts, base, { signal, onProgress }) {
  const cache = await caches.open(CACHE_NAME);
  const download = { loaded: 0, total: parts.reduce((sum, p) => sum + p.bytes, 0) };
  const report = (delta, fromCache) => {
    download.loaded += delta;
    onProgress({ phase: 'download', loaded: download.loaded, total: download.total, fromCache });
  };
  const files = [];
  for (const part of parts) files.push(await loadFile(part, base, cache, signal, report));
  return files;
}

async function loadFile(part, base, cache, signal, report) {
  const model = new Uint8Array(part.bytes);
  const chunks = part.chunks ?? [];
  const offsets = [];
  let offset = 0;
  for (const c of chunks) { offsets.push(offset); offset += c.bytes; }
  if (offset !== part.bytes) {
    throw new ClearCutError('manifest', `The manifest's chunk sizes (${offset} bytes) do not add up to the model's ${part.bytes} bytes: rebuild the bundle.`);
  }
  let next = 0;
  const worker = async () => {
    while (next < chunks.length) {
      const index = next++;
      model.set(await loadChunk(chunks[index], base, cache, signal, report), offsets[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_CHUNKS, chunks.length) }, worker));
  return model;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** @param {Chunk} chunk */
async function loadChunk(chunk, base, cache, signal, report) {
  const url = new URL(chunk.path, base).href;
  const cached = await cache.match(url);
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (bytes.length === chunk.bytes && (await sha256Hex(bytes)) === chunk.sha256) {
      report(bytes.length, true);
      return bytes;
    }
    await cache.delete(url); // a damaged cache entry is dropped and fetched again
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
  await cache.put(url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } })).catch(() => {});
  return bytes;
}
