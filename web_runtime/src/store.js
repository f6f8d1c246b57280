// The Cache API, under one integrity rule: bytes are stored only after they matched the sha256 the manifest
// lists, and used only after they match it again. It holds the model chunks, the runtime and onnxruntime files
// (so that a later visit starts with the network gone) and the last good manifest of each manifest URL.
// Used by the worker (loader.js) and by the page (boot.js: starting the worker from cached files).
// The storage is the page's origin's, also when the bundle comes from another origin.

/** @typedef {import('./manifest').BundleManifest} BundleManifest */

export const CHUNK_CACHE = 'clearcut-chunks-v1';
export const FILE_CACHE = 'clearcut-files-v1';
const BASE_HEADER = 'X-ClearCut-Base'; // stored with a manifest: the URL its paths are relative to

/** A cache, or null where the Cache API is missing (not a secure context) or refused (storage blocked). */
export async function openCache(name) {
  if (typeof caches === 'undefined') return null;
  try {
    return await caches.open(name);
  } catch {
    return null;
  }
}

/** @param {BufferSource} bytes */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * The cached bytes of `url` if they still match `expected`; a damaged entry is deleted (and null returned).
 * @param {Cache | null} cache @param {string} url @param {{sha256: string, bytes: number}} expected
 * @returns {Promise<Uint8Array | null>}
 */
export async function cachedBytes(cache, url, expected) {
  const hit = await cache?.match(url).catch(() => undefined);
  if (!hit) return null;
  const bytes = new Uint8Array(await hit.arrayBuffer());
  if (bytes.length === expected.bytes && (await sha256Hex(bytes)) === expected.sha256) return bytes;
  await cache.delete(url).catch(() => {});
  return null;
}

/** Store verified bytes; a full or blocked storage only costs the offline copy, never the load. */
export async function putBytes(cache, url, bytes, type = 'application/octet-stream') {
  await cache?.put(url, new Response(bytes, { headers: { 'Content-Type': type } })).catch(() => {});
}

/**
 * The manifest that last loaded completely from `manifestUrl` (the page may be offline now), with the base
 * its paths were resolved against, or null.
 * @param {string} manifestUrl @returns {Promise<{text: string, manifest: BundleManifest, base: string} | null>}
 */
export async function lastGoodManifest(manifestUrl) {
  const hit = await (await openCache(FILE_CACHE))?.match(manifestUrl).catch(() => undefined);
  if (!hit) return null;
  try {
    const text = await hit.text();
    return { text, manifest: JSON.parse(text), base: hit.headers.get(BASE_HEADER) || new URL('.', manifestUrl).href };
  } catch {
    return null;
  }
}

/**
 * Every URL a manifest makes the runtime cache: its runtime and onnxruntime files and all model chunks.
 * @param {BundleManifest} manifest @param {string} base @returns {Set<string>}
 */
export function referencedUrls(manifest, base) {
  const paths = Object.keys(manifest.files || {});
  for (const variant of Object.values(manifest.variants || {})) {
    for (const part of variant.stages || [variant]) paths.push(...(part.chunks || []).map((c) => c.path));
  }
  return new Set(paths.map((p) => new URL(p, base).href));
}

/**
 * Remember `text` as the last good manifest of `manifestUrl` (called once a load with it succeeded). When it
 * replaces another one (a new bundle published at the same URL), the entries only the old one referenced are
 * deleted: the cache holds one version per manifest URL.
 * @param {string} manifestUrl @param {string} text @param {BundleManifest} manifest @param {string} base
 */
export async function keepManifest(manifestUrl, text, manifest, base) {
  const files = await openCache(FILE_CACHE);
  if (!files) return;
  const previous = await lastGoodManifest(manifestUrl);
  if (previous?.text === text && previous.base === base) return;
  await files.put(manifestUrl, new Response(text, {
    headers: { 'Content-Type': 'application/json', [BASE_HEADER]: base },
  })).catch(() => {});
  if (!previous) return;
  const keep = referencedUrls(manifest, base);
  const stale = [...referencedUrls(previous.manifest, previous.base)].filter((url) => !keep.has(url));
  const chunks = await openCache(CHUNK_CACHE);
  await Promise.all(stale.flatMap((url) => [files.delete(url), chunks?.delete(url)]).map((p) => p?.catch(() => {})));
}

/** A static import or re-export of a relative path, at the start of a line (so never one quoted in a comment):
 * the only way the runtime's modules refer to each other. Groups: the statement up to the quote, the quote, the path. */
export const RELATIVE_IMPORT = /^(\s*(?:import|export)\s[^'";]*?\bfrom\s*|\s*import\s*)(['"])(\.\.?\/[^'"]+)\2/gm;

/**
 * The relative imports of a module of the bundle: [specifier as written, path in the bundle].
 * @param {string} path the module's path in the bundle @param {string} source @returns {[string, string][]}
 */
export function relativeImports(path, source) {
  return [...source.matchAll(RELATIVE_IMPORT)].map((m) => [m[3], new URL(m[3], `https://bundle/${path}`).pathname.slice(1)]);
}
