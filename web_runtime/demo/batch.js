// The demo page's batch: many photos (picked, or a dropped or picked folder) through the one cutter of the page
// with `cutter.cutMany` (one photo at a time), a row per photo with its progress or error, overall progress,
// Cancel (stops after the photo being cut), and one "Download all" zip streamed with fflate.
import { Zip, ZipPassThrough } from './fflate.js';

const EXTENSIONS = { png: 'png', webp: 'webp', jpeg: 'jpg' };
const IMAGE_NAME = /\.(png|jpe?g|webp|gif|bmp|avif|ico)$/i;
const THUMB = 48;

/** Files of a dropped or picked folder that look like images (by type or name); the rest is skipped. */
export const isImage = (file) => file.type.startsWith('image/') || IMAGE_NAME.test(file.name);

/** A picked file and its path: in the picked folder (`webkitRelativePath`), else its name. */
export const picked = (file) => ({ file, path: file.webkitRelativePath || file.name });

/**
 * Every file under the dropped items, folders walked recursively, with its path in the dropped folder (a
 * dropped File's own `webkitRelativePath` is empty).
 * @param {DataTransferItemList} items @returns {Promise<{files: {file: File, path: string}[], folder: boolean}>}
 */
export async function droppedFiles(items) {
  const files = [];
  const entries = [];
  for (const item of [...items].filter((i) => i.kind === 'file')) {
    const entry = item.webkitGetAsEntry?.();
    if (entry) entries.push(entry);
    else if (item.getAsFile()) files.push(picked(item.getAsFile())); // no entry (e.g. a script's DataTransfer): the file itself
  }
  const walk = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      files.push({ file, path: entry.fullPath.replace(/^\//, '') });
      return;
    }
    const reader = entry.createReader();
    for (;;) { // readEntries gives at most 100 entries a call
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walk(child);
    }
  };
  for (const entry of entries) await walk(entry);
  return { files, folder: entries.some((e) => e.isDirectory) };
}

/**
 * A zip written while the batch runs: each cutout passes through fflate (stored: PNG, WebP and JPEG are
 * compressed already) and its bytes go at once into a Blob part, so the page's JS heap holds one cutout at
 * a time. The finished zip is a Blob made of those parts (no copy); its bytes live in the browser's blob
 * storage, which Chromium moves to disk once it grows large, not in the page's heap.
 */
export function zipStream() {
  const parts = [];
  const names = new Set();
  let pending = [];
  let bytes = 0;
  let finish;
  let fail;
  const done = new Promise((resolve, reject) => { finish = resolve; fail = reject; });
  const flush = () => {
    if (pending.length) parts.push(new Blob(pending));
    pending = [];
  };
  const zip = new Zip((err, chunk, final) => {
    if (err) { fail(err); return; }
    pending.push(chunk);
    bytes += chunk.length;
    if (final) {
      flush();
      finish(new Blob(parts, { type: 'application/zip' }));
    }
  });
  const unique = (name) => {
    let candidate = name;
    for (let n = 2; names.has(candidate); n++) candidate = name.replace(/(\.[^./]+)?$/, ` (${n})$1`);
    names.add(candidate);
    return candidate;
  };
  return {
    get bytes() { return bytes; },
    get files() { return names.size; },
    /** @param {string} name @param {Blob} blob */
    async add(name, blob) {
      const data = new Uint8Array(await blob.arrayBuffer());
      const entry = new ZipPassThrough(unique(name));
      zip.add(entry);
      entry.push(data, true);
      flush();
    },
    /** @returns {Promise<Blob>} */
    end() {
      zip.end();
      return done;
    },
  };
}

/** `photos/shoe.jpg` → `photos/shoe.png` for the chosen format. */
export const outputName = (name, format) => name.replace(/\.[^./]*$/, '') + '.' + EXTENSIONS[format];

/**
 * Run a batch and show it in `ui` ({list, progress, message, open}); resolves with the zip Blob (or null when nothing
 * was cut) and the counts. The zip keeps the photos' paths, with the format's extension. A finished row opens its
 * photo and cutout (`ui.open(file, cutout, name)`: the page's before/after view and its download link); the cutout
 * Blob stays in the browser's blob storage, as the zip's parts do.
 * @param {{cutter: import('./clearcut').Cutter, files: {file: File, path: string}[],
 *          options: import('./clearcut').CutManyOptions, ui: Record<string, HTMLElement>, signal: AbortSignal}} batch
 */
export async function runBatch({ cutter, files, options, ui, signal }) {
  const rows = files.map(({ path }) => row(ui.list, path));
  const zip = zipStream();
  let ok = 0;
  let failed = 0;
  const say = (text) => { ui.message.textContent = text; };
  const onProgress = (p) => {
    const r = rows[p.index];
    r.progress.value = p.photo;
    if (p.step === 'start') r.li.dataset.status = 'cutting';
    /** @type {HTMLProgressElement} */ (ui.progress).value = p.overall ?? 0;
    if (p.step !== 'done' && p.step !== 'error') say(`Cutting ${p.index + 1} of ${p.total}: ${files[p.index].path} (${p.step})…`);
  };
  for await (const item of cutter.cutMany(files.map((f) => f.file), { ...options, signal, onProgress })) {
    const r = rows[item.index];
    if (item.ok) {
      const name = outputName(files[item.index].path, options.format || 'png');
      await zip.add(name, item.result);
      await thumbnail(r.canvas, item.result);
      r.note.textContent = `${(item.result.size / 1024).toFixed(0)} kB`;
      r.li.dataset.status = 'done';
      const open = () => {
        for (const other of rows) other.li.removeAttribute('aria-current');
        r.li.setAttribute('aria-current', 'true');
        ui.open?.(files[item.index].file, item.result, name.split('/').pop());
      };
      Object.assign(r.li, { tabIndex: 0, title: `Show ${files[item.index].path} and its cutout` });
      r.li.onclick = open;
      r.li.onkeydown = (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } };
      ok++;
    } else {
      r.note.textContent = item.error.message;
      r.li.title = `${item.error.code}: ${item.error.message}`;
      r.li.dataset.status = 'error';
      failed++;
    }
  }
  for (const r of rows) if (r.li.dataset.status === 'queued') r.li.dataset.status = 'skipped';
  const blob = ok ? await zip.end() : null;
  return { blob, ok, failed, skipped: files.length - ok - failed };
}

function row(list, name) {
  const li = document.createElement('li');
  li.dataset.status = 'queued';
  const canvas = Object.assign(document.createElement('canvas'), { width: THUMB, height: THUMB });
  const label = Object.assign(document.createElement('span'), { className: 'name', textContent: name });
  const progress = Object.assign(document.createElement('progress'), { max: 1, value: 0 });
  const note = Object.assign(document.createElement('span'), { className: 'note' });
  li.append(canvas, label, progress, note);
  list.append(li);
  return { li, canvas, progress, note };
}

/** A small preview of the cutout; the cutout itself is not kept. */
async function thumbnail(canvas, blob) {
  try {
    const bitmap = await createImageBitmap(blob, { resizeWidth: THUMB, resizeQuality: 'low' });
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, THUMB, THUMB);
    ctx.drawImage(bitmap, 0, Math.max(0, (THUMB - bitmap.height) / 2));
    bitmap.close();
  } catch {
    // a preview that cannot be drawn changes nothing in the batch
  }
}
