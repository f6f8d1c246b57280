// One cut: decode → model input → runner → mask at photo size (+ refinement) → output image → encode,
// with the time each step took.
import { ClearCutError, aborted } from './errors.js';
import { resizeRGB8, resizeFloat, normalise } from './imaging.js';
import { refineEdges, wantRefine } from './refine.js';
import { decode, parseColor, compose, encode } from './compose.js';

/** @typedef {import('./manifest').BundleManifest} BundleManifest */
/** @typedef {import('./runners').Runner} Runner */

const OUTPUTS = ['cutout', 'mask', 'color'];
const FORMATS = ['png', 'webp', 'jpeg', 'raw'];

/** A cut's steps, in order, as its progress reports them (`loaded` = steps done before this one). */
const STEPS = ['decode', 'inference', 'mask', 'encode'];

/**
 * @param {{source: Blob | ImageBitmap | ImageData, options: import('./clearcut').CutOptions, manifest: BundleManifest,
 *          runner: Runner, maxPixels: number, isCancelled: () => boolean,
 *          onStep?: (step: string, loaded: number, total: number) => void}} job
 * @returns {Promise<{result: {image?: ImageData, blob?: Blob, timing: object}, transfer: Transferable[]}>}
 */
export async function cut({ source, options, manifest, runner, maxPixels, isCancelled, onStep }) {
  const output = options.output || 'cutout';
  const format = options.format || 'png';
  if (!OUTPUTS.includes(output)) throw new ClearCutError('options', `Unknown output "${output}": use ${OUTPUTS.join(', ')}.`);
  if (!FORMATS.includes(format)) throw new ClearCutError('options', `Unknown format "${format}": use ${FORMATS.join(', ')}.`);
  const colour = output === 'color' || (output === 'cutout' && format === 'jpeg') ? parseColor(options.color) : null;
  const checkCancelled = () => { if (isCancelled()) throw aborted('The cut'); };
  const step = (name) => onStep?.(name, STEPS.indexOf(name), STEPS.length);

  const clock = [performance.now()];
  step('decode');
  const { rgba, width, height } = await decode(source, maxPixels);
  clock.push(performance.now());
  checkCancelled();
  const pre = manifest.preprocessing;
  const [mh, mw] = pre.input_size;
  const input = { type: 'float32', data: normalise(resizeRGB8(rgba, width, height, mw, mh), mw, mh, pre), dims: [1, 3, mh, mw] };
  clock.push(performance.now());
  step('inference');
  const { alpha: small, stages } = await runner.run(input, isCancelled);
  clock.push(performance.now());
  checkCancelled();

  step('mask');
  const mask = resizeFloat(small, mw, mh, width, height);
  if (wantRefine(options.refine, manifest.refine, width, height, pre.input_size)) refineEdges(mask, rgba, width, height, manifest.refine);
  const image = compose(rgba, mask, width, height, output, colour);
  clock.push(performance.now());
  // Where the time of a cut goes (ms): decode, resize+normalise, inference, mask+refine+compose, encode.
  const timing = (encoded) => {
    if (encoded) clock.push(performance.now());
    const [decodeMs, preprocessMs, inferenceMs, postprocessMs, encodeMs = 0] = clock.slice(1).map((t, i) => t - clock[i]);
    // staged variants: inferenceMs includes each stage's session creation; `stages` has the detail
    return { decodeMs, preprocessMs, inferenceMs, postprocessMs, encodeMs, totalMs: clock.at(-1) - clock[0], ...(stages ? { stages } : {}) };
  };
  if (format === 'raw') return { result: { image, timing: timing(false) }, transfer: [image.data.buffer] };
  step('encode');
  const blob = await encode(image, format, options.quality);
  return { result: { blob, timing: timing(true) }, transfer: [] };
}
