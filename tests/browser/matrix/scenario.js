// The browser matrix's scenario (tests/browser/test_browser_matrix.py): what an integrator does with the runtime,
// run in whichever engine opened matrix.html?bundle=<folder>. Each step's outcome goes into window.matrixResult,
// which the test's driver (Playwright, puppeteer-core over WebDriver BiDi, Selenium's WebKitGTK driver) reads
// back as JSON: no driver needs more than "open a URL, read a value".
const params = new URLSearchParams(location.search);
const bundle = `/${params.get('bundle') || 'tiny'}/`;
const photo = params.get('photo') || '/photo.png';

const b64 = (bytes) => {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
const outcome = async (work) => {
  try {
    return { ok: true, ...(await work()) };
  } catch (e) {
    return { ok: false, code: e.code ?? null, name: e.name, message: String(e.message) };
  }
};

async function run() {
  const result = { userAgent: navigator.userAgent };
  const { createCutter } = await import(`${bundle}clearcut.js`);
  const bytes = new Uint8Array(await (await fetch(photo)).arrayBuffer());
  const file = () => new Blob([bytes], { type: 'image/png' });
  let cutter;
  result.load = await outcome(async () => {
    cutter = await createCutter({ manifestUrl: `${bundle}manifest.json`, variant: params.get('variant') || undefined });
    return { ...cutter.info };
  });
  if (!cutter) return result;
  result.mask = await outcome(async () => {
    const image = await cutter.cut(file(), { output: 'mask', format: 'raw' });
    const alpha = new Uint8Array(image.width * image.height);
    for (let i = 0; i < alpha.length; i++) alpha[i] = image.data[4 * i];
    return { width: image.width, height: image.height, alpha: b64(alpha) };
  });
  result.formats = {};
  for (const format of ['png', 'jpeg', 'webp']) {
    result.formats[format] = await outcome(async () => {
      const blob = await cutter.cut(file(), { format });
      const head = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
      return { type: blob.type, size: blob.size, head: Array.from(head) };
    });
  }
  const corrupt = bytes.slice(0, 200);
  result.bad = {
    empty: await outcome(() => cutter.cut(new Blob([]))),
    noise: await outcome(() => cutter.cut(new Blob([new Uint8Array(4096).map((_, i) => (i * 7919) & 255)]))),
    truncated: await outcome(() => cutter.cut(new Blob([corrupt], { type: 'image/png' }))),
    badOption: await outcome(() => cutter.cut(file(), { format: 'gif' })),
  };
  result.batch = await outcome(async () => {
    const items = [];
    for await (const item of cutter.cutMany([file(), new Blob([]), file()])) {
      items.push({ index: item.index, ok: item.ok, code: item.ok ? null : item.error.code, type: item.ok ? item.result.type : null });
    }
    return { items };
  });
  result.stillWorks = await outcome(async () => ({ type: (await cutter.cut(file())).type }));
  cutter.dispose();
  return result;
}

run().then((r) => { window.matrixResult = JSON.stringify(r); },
  (e) => { window.matrixResult = JSON.stringify({ fatal: String(e?.stack || e) }); });
