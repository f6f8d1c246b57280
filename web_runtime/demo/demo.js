// The ClearCut demo page: pick or drop an image, see before/after, choose a background and format, download it;
// or pick or drop many images or a folder and cut them all (batch.js) into one zip.
import { createCutter } from './clearcut.js';
import { droppedFiles, isImage, outputName, picked, runBatch } from './batch.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let cutter = null;
let current = null; // the File being shown
let afterUrl = null;
let beforeUrl = null;
let zipUrl = null;
let batching = false;

function status(text, isError = false) {
  $('message').textContent = text;
  $('status').classList.toggle('error', isError);
}

function background() {
  const choice = document.querySelector('input[name="bg"]:checked').value;
  if (choice === 'transparent') return null;
  return choice === 'custom' ? $('color').value : choice;
}

/** The cut options the controls ask for: background and format. */
function cutOptions() {
  const colour = background();
  const format = $('format').value;
  return { ...(colour ? { output: 'color', color: colour } : { output: 'cutout' }), format };
}

async function show(file) {
  current = file;
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(file);
  $('before').src = beforeUrl;
  await render();
}

async function render() {
  if (!cutter || !current || batching) return;
  status('Cutting…');
  document.body.dataset.state = 'cutting';
  try {
    const started = performance.now();
    const options = cutOptions();
    const blob = await cutter.cut(current, options);
    if (afterUrl) URL.revokeObjectURL(afterUrl);
    afterUrl = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => { $('after').onload = resolve; $('after').onerror = reject; $('after').src = afterUrl; });
    $('download').href = afterUrl;
    $('download').download = outputName(current.name || 'cutout', options.format);
    $('download').textContent = `Download ${options.format.toUpperCase()}`;
    $('download').hidden = false;
    status(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
    document.body.dataset.state = 'done';
  } catch (err) {
    status(err.message, true);
    document.body.dataset.state = 'error';
  }
}

/** A batch row's photo and cutout in the before/after view with its download link (nulls: an empty view). */
function showResult(file, cutout, name) {
  for (const url of [beforeUrl, afterUrl]) if (url) URL.revokeObjectURL(url);
  beforeUrl = file && URL.createObjectURL(file);
  afterUrl = cutout && URL.createObjectURL(cutout);
  current = null; // a change of background or format re-cuts a single photo, not a batch row
  if (beforeUrl) $('before').src = beforeUrl; else $('before').removeAttribute('src');
  if (afterUrl) $('after').src = afterUrl; else $('after').removeAttribute('src');
  $('download').hidden = !cutout;
  if (cutout) {
    $('download').href = afterUrl;
    $('download').download = name;
    $('download').textContent = `Download ${name}`;
  }
}

/** One image: the before/after view. Several, or a folder: the batch. @param {{file: File, path: string}[]} files */
function take(files, folder) {
  const images = folder ? files.filter(({ file }) => isImage(file)) : files;
  if (images.length === 1 && !folder) show(images[0].file);
  else if (images.length) batch(images, files.length - images.length);
  else status(folder ? 'The folder holds no images.' : 'No file was chosen.', true);
}

async function batch(files, ignored) {
  if (batching) { status('A batch is running: cancel it or wait for it to finish.', true); return; }
  if (!cutter) { status('The model is still loading: try again in a moment.', true); return; }
  batching = true;
  const controller = new AbortController();
  const ui = { list: $('batch-list'), progress: $('batch-progress'), message: $('batch-message'), open: showResult };
  // the before/after view belongs to one photo: cleared now, it shows a batch row once one is opened
  showResult(null, null, null);
  ui.list.replaceChildren();
  ui.progress.value = 0;
  if (zipUrl) URL.revokeObjectURL(zipUrl);
  zipUrl = null;
  $('download-all').hidden = true;
  $('batch').hidden = false;
  $('cancel').disabled = false;
  $('cancel').onclick = () => {
    controller.abort();
    $('cancel').disabled = true;
    ui.message.textContent = 'Cancelling after this photo…';
  };
  for (const input of [$('file'), $('folder')]) input.disabled = true;
  document.body.dataset.batch = 'running';
  status(`Cutting ${files.length} images${ignored ? ` (${ignored} files that are not images skipped)` : ''}…`);
  const started = performance.now();
  try {
    const { blob, ok, failed, skipped } = await runBatch({ cutter, files, options: cutOptions(), ui, signal: controller.signal });
    const seconds = (performance.now() - started) / 1000;
    if (blob) {
      zipUrl = URL.createObjectURL(blob);
      $('download-all').href = zipUrl;
      $('download-all').textContent = `Download all (zip, ${ok} files, ${(blob.size / 1048576).toFixed(1)} MiB)`;
      $('download-all').hidden = false;
    }
    ui.progress.value = controller.signal.aborted ? ui.progress.value : 1;
    ui.message.textContent = `${ok} cut, ${failed} failed${skipped ? `, ${skipped} not cut (cancelled)` : ''} in ${seconds.toFixed(1)} s ` +
      `(${(60 * (ok + failed) / seconds).toFixed(0)} photos/min).`;
    status(controller.signal.aborted ? 'Batch cancelled.' : 'Batch done.');
    document.body.dataset.batch = controller.signal.aborted ? 'cancelled' : 'done';
  } catch (err) {
    status(`The batch stopped: ${err.message}`, true);
    document.body.dataset.batch = 'error';
  } finally {
    batching = false;
    $('cancel').disabled = true;
    for (const input of [$('file'), $('folder')]) input.disabled = false;
  }
}

$('file').addEventListener('change', () => take([...$('file').files].map(picked), false));
$('folder').addEventListener('change', () => take([...$('folder').files].map(picked), true));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', async (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const { files, folder } = await droppedFiles(e.dataTransfer.items);
  take(files, folder);
});
for (const input of document.querySelectorAll('input[name="bg"], #color, #format')) input.addEventListener('change', render);

try {
  cutter = await createCutter({
    manifestUrl: 'manifest.json',
    variant: params.get('variant') || undefined,
    backend: params.get('backend') || 'wasm',
    maxPixels: Number(params.get('maxPixels')) || undefined,
    onProgress: (p) => {
      if (cutter) return; // the warm-up after loading runs quietly
      $('progress').value = p.total ? p.loaded / p.total : 0;
      status(p.phase === 'session' ? 'Preparing the model…' : p.phase === 'decode' ? 'Decoding weights…'
        : p.phase === 'probe' ? 'Checking the GPU\'s result…'
        : `Downloading the model${p.fromCache ? ' (from cache)' : ''}: ${(p.loaded / 1048576).toFixed(1)} / ${(p.total / 1048576).toFixed(1)} MiB`);
    },
  });
  globalThis.clearcutDemo = { cutter }; // for the console
  const { model, variant, backend, threads, threadsReason, offline } = cutter.info;
  $('model').textContent = `Model ${model.name} (${variant}, ${backend}${threads ? `, ${threads} thread${threads > 1 ? 's' : ''}` : ''}). ` +
    `${model.licence_note}${offline ? ' Offline: using the copy kept from an earlier visit.' : ''}`;
  if (threadsReason) $('model').title = `One thread: ${threadsReason}.`;
  $('progress').value = 1;
  status('Ready: choose or drop an image, several, or a folder.');
  document.body.dataset.state = 'ready';
  if (current) render();
} catch (err) {
  status(`The model could not be loaded: ${err.message}`, true);
  document.body.dataset.state = 'error';
}
