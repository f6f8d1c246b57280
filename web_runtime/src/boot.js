// Starting the runtime's worker from the page, wherever the bundle is served from:
// - the page's own origin: `new Worker(url)`;
// - another origin (a CDN): browsers refuse to start a worker from another origin's script, so a one-line
//   blob: module worker imports it instead (a "trampoline"; the page's CSP needs `worker-src <bundle origin> blob:`,
//   since a module worker's imports count as worker scripts, and the bundle CORS headers). The worker then runs with the page's origin: its fetches are CORS requests to the CDN and its
//   Cache API storage is the page's;
// - neither loads (the network is gone): the worker's modules are taken from the copies the worker kept in
//   the Cache API at its last complete load, verified against the last good manifest, and linked with blob:
//   URLs (relative imports rewritten), so a page that is itself available offline still cuts.
import { ClearCutError } from './errors.js';
import { FILE_CACHE, RELATIVE_IMPORT, cachedBytes, lastGoodManifest, openCache, relativeImports } from './store.js';
import { VERSION } from './version.js';

/**
 * A started worker (it answered `ready`), or a ClearCutError `worker` saying why there is none.
 * @param {{workerUrl: URL, manifestUrl: string, baseUrl: string | null, signal?: AbortSignal,
 *          abortError: () => Error, bundled: boolean}} options
 *   `bundled`: the worker URL was guessed from this module's own URL (no baseUrl or workerUrl was given)
 * @returns {Promise<Worker>}
 */
export async function startWorker({ workerUrl, manifestUrl, baseUrl, signal, abortError, bundled }) {
  let failure;
  try {
    return await launch(workerUrl, signal, abortError);
  } catch (err) {
    if (err instanceof ClearCutError || signal?.aborted) throw err;
    failure = err;
  }
  const cached = await linkFromCache(manifestUrl, baseUrl).catch(() => null);
  if (cached) {
    try {
      return await launch(cached.url, signal, abortError);
    } catch (err) {
      if (err instanceof ClearCutError || signal?.aborted) throw err;
    } finally {
      cached.revoke();
    }
  }
  const hints = [];
  const remote = workerUrl.origin !== location.origin;
  if (failure?.name === 'SecurityError' || remote) {
    hints.push(`the page's Content-Security-Policy must allow the worker (worker-src ${remote ? `${workerUrl.origin} blob:` : "'self'"})` +
      (remote ? `, and ${workerUrl.origin} must send Access-Control-Allow-Origin` : ''));
  }
  if (bundled) hints.push('if clearcut.js was bundled into your app, pass baseUrl (the folder of the ClearCut bundle: manifest.json, worker.js, ort-*/)');
  hints.push('check the network; offline, the worker starts only from the copies kept at an earlier complete load');
  throw new ClearCutError('worker', `Could not start the ClearCut worker from ${workerUrl.href} (${failure?.message || 'it did not load'}): ${hints.join('; ')}.`);
}

/**
 * Start a module worker from `url` and wait for its `ready` message; rejects with the load error, or a
 * ClearCutError when the worker is another runtime version.
 * @param {URL} url @param {AbortSignal | undefined} signal @param {() => Error} abortError
 * @returns {Promise<Worker>}
 */
function launch(url, signal, abortError) {
  const local = url.origin === location.origin || url.protocol === 'blob:' || url.protocol === 'data:';
  const trampoline = local ? null
    : URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: 'text/javascript' }));
  return new Promise((resolve, reject) => {
    let worker;
    const settle = (fn, value) => {
      signal?.removeEventListener('abort', onAbort);
      if (trampoline) URL.revokeObjectURL(trampoline);
      worker.onmessage = worker.onerror = null;
      fn(value);
    };
    const fail = (err) => { worker.terminate(); settle(reject, err); };
    const onAbort = () => fail(abortError());
    try {
      worker = new Worker(trampoline || url, { type: 'module', name: 'clearcut' });
    } catch (err) {
      if (trampoline) URL.revokeObjectURL(trampoline);
      reject(err); // e.g. a SecurityError: the page's CSP does not allow it
      return;
    }
    if (signal?.aborted) { onAbort(); return; }
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.onerror = (event) => {
      event.preventDefault();
      fail(new Error(event.message || 'the script or one of its imports did not load'));
    };
    worker.onmessage = ({ data }) => {
      if (data?.type !== 'ready') return;
      if (!sameRelease(data.version, VERSION)) {
        fail(new ClearCutError('worker', `The worker at ${url.href} is ClearCut runtime ${data.version} and this clearcut.js is ` +
          `${VERSION}: they do not speak the same messages. Point baseUrl at a bundle built with runtime ${VERSION} ` +
          "(its manifest.json names it in versions['clearcut-runtime']), or install the matching npm version."));
        return;
      }
      settle(resolve, worker);
    };
  });
}

/** Same major.minor (the messages only change with those; 0.x releases count the minor as major). */
function sameRelease(a, b) {
  return typeof a === 'string' && a.split('.').slice(0, 2).join('.') === b.split('.').slice(0, 2).join('.');
}

/**
 * The worker's module graph from the Cache API as blob: URLs, each module's bytes checked against the last
 * good manifest's sha256 first; null when anything is missing or does not match.
 * @param {string} manifestUrl @param {string | null} baseUrl
 * @returns {Promise<{url: URL, revoke: () => void} | null>}
 */
async function linkFromCache(manifestUrl, baseUrl) {
  const kept = await lastGoodManifest(manifestUrl);
  const cache = await openCache(FILE_CACHE);
  if (!kept || !cache) return null;
  const { manifest } = kept;
  const base = baseUrl || kept.base;
  /** @type {Map<string, Promise<string>>} */
  const linked = new Map();
  const link = (path) => {
    if (!linked.has(path)) {
      linked.set(path, (async () => {
        const entry = manifest.files[path];
        const bytes = entry && await cachedBytes(cache, new URL(path, base).href, entry);
        if (!bytes) throw new Error(`${path} is not in the cache`);
        const source = new TextDecoder().decode(bytes);
        const urls = new Map(await Promise.all(relativeImports(path, source).map(async ([spec, dep]) => [spec, await link(dep)])));
        const rewritten = source.replace(RELATIVE_IMPORT, (_, keyword, quote, spec) => keyword + quote + urls.get(spec) + quote);
        return URL.createObjectURL(new Blob([rewritten], { type: 'text/javascript' }));
      })());
    }
    return linked.get(path);
  };
  try {
    const url = new URL(await link(manifest.runtime.worker));
    return { url, revoke: () => revokeAll(linked) };
  } catch {
    revokeAll(linked);
    return null;
  }
}

function revokeAll(linked) {
  for (const url of linked.values()) url.then((u) => URL.revokeObjectURL(u), () => {});
}
