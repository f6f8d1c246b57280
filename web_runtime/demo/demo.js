// The ClearCut demo page: pick or drop an image, see before/after, choose a background, download the PNG.
import { createCutter } from './clearcut.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let cutter = null;
let current = null; // the File being shown
let afterUrl = null;
let beforeUrl = null;

function status(text, isError = false) {
  $('message').textContent = text;
  $('status').classList.toggle('error', isError);
}

function background() {
  const choice = document.querySelector('input[name="bg"]:checked').value;
  if (choice === 'transparent') return null;
  return choice === 'custom' ? $('color').value : choice;
}

async function show(file) {
  current = file;
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = URL.createObjectURL(file);
  $('before').src = beforeUrl;
  await render();
}

async function render() {
  if (!cutter || !current) return;
  const colour = background();
  status('Cutting…');
  document.body.dataset.state = 'cutting';
  try {
    const started = performance.now();
    const blob = await cutter.cut(current, colour ? { output: 'color', color: colour } : { output: 'cutout' });
    if (afterUrl) URL.revokeObjectURL(afterUrl);
    afterUrl = URL.createObjectURL(blob);
    await new Promise((resolve, reject) => { $('after').onload = resolve; $('after').onerror = reject; $('after').src = afterUrl; });
    $('download').href = afterUrl;
    $('download').hidden = false;
    status(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
    document.body.dataset.state = 'done';
  } catch (err) {
    status(err.message, true);
    document.body.dataset.state = 'error';
  }
}

$('file').addEventListener('change', () => { if ($('file').files[0]) show($('file').files[0]); });
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files[0]) show(e.dataTransfer.files[0]);
});
for (const input of document.querySelectorAll('input[name="bg"], #color')) input.addEventListener('change', render);

try {
  cutter = await createCutter({
    manifestUrl: 'manifest.json',
    variant: params.get('variant') || undefined,
    backend: params.get('backend') || 'wasm',
    onProgress: (p) => {
      $('progress').value = p.total ? p.loaded / p.total : 0;
      status(p.phase === 'session' ? 'Preparing the model…' : p.phase === 'warmup' ? 'Warming up the model…'
        : p.phase === 'decode' ? 'Decoding weights…'
        : `Downloading the model${p.fromCache ? ' (from cache)' : ''}: ${(p.loaded / 1048576).toFixed(1)} / ${(p.total / 1048576).toFixed(1)} MiB`);
    },
  });
  const { model, variant, backend, threads, threadsReason, offline } = cutter.info;
  $('model').textContent = `Model ${model.name} (${variant}, ${backend}${threads ? `, ${threads} thread${threads > 1 ? 's' : ''}` : ''}). ` +
    `${model.licence_note}${offline ? ' Offline: using the copy kept from an earlier visit.' : ''}`;
  if (threadsReason) $('model').title = `One thread: ${threadsReason}.`;
  $('progress').value = 1;
  status('Ready: choose or drop an image.');
  document.body.dataset.state = 'ready';
  if (current) render();
} catch (err) {
  status(`The model could not be loaded: ${err.message}`, true);
  document.body.dataset.state = 'error';
}
