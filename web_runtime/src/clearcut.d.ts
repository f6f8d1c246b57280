// Types of the ClearCut browser runtime (src/clearcut.js).

export type Backend = 'wasm' | 'webgpu' | 'auto';
export type Output = 'cutout' | 'mask' | 'color';
export type Format = 'png' | 'webp' | 'jpeg' | 'raw';
export type ErrorCode =
  | 'empty' | 'unsupported-format' | 'decode' | 'too-large' | 'integrity' | 'network' | 'missing'
  | 'aborted' | 'backend' | 'variant' | 'manifest' | 'options' | 'state' | 'worker' | 'internal';

export interface Progress {
  type: 'progress';
  /** `download`: model bytes (from the network or the Cache API); `session`: compiling the model;
   * `decode`: decoding weights — a coded variant's weight container rebuilt into the model (loaded / total
   * coded weights), after its download; `warmup`: one run on a blank input so that the first real cut is as
   * fast as the next ones (after `createCutter` resolved, and only when no cut was asked yet); `stage`: a cut of
   * a staged variant entering graph `stage` (`null` when the last one is done); `probe`: on WebGPU, one run on the
   * probe input whose expected alpha the bundle records, before `createCutter` resolves (a mismatch → WASM). */
  phase: 'download' | 'decode' | 'session' | 'warmup' | 'stage' | 'probe';
  stage?: string | null;
  loaded: number;
  total: number;
  fromCache?: boolean;
}

export interface CutterOptions {
  /**
   * The ClearCut bundle's folder (like imgly's `publicPath`), e.g. `https://cdn.example.com/clearcut/0.1.0-a104325fa025/`:
   * `manifest.json`, `worker.js` and every file the manifest lists (onnxruntime, model chunks) are resolved
   * against it. Needed when clearcut.js was bundled into an app (npm) and the bundle is served elsewhere; it
   * may be on another origin (the worker then starts through a blob: module worker: the page's CSP needs
   * `worker-src blob:`). Default: none — the manifest next to the page, the worker next to clearcut.js, the
   * manifest's paths relative to the manifest.
   */
  baseUrl?: string | URL;
  /** URL of the bundle's manifest.json (default: `manifest.json` in `baseUrl`, else next to the page). */
  manifestUrl?: string;
  /** Variant name from the manifest (default: the manifest's `default_variant`). */
  variant?: string;
  /** `wasm` (default), `webgpu`, or `auto` (WebGPU on a hardware adapter, else WASM, with the reason in `info`). */
  backend?: Backend;
  /** Images above this many pixels are refused with a `too-large` error (default 40 000 000). */
  maxPixels?: number;
  /** WASM threads when cross-origin isolated (default: hardware concurrency, at most 4). */
  numThreads?: number;
  /** Run the model once on a blank input right after `createCutter` resolved (default true), unless a cut is
   * asked first (that cut then pays onnxruntime's first-run setup instead, and nothing runs before it): a
   * cut asked later is as fast as the next ones. A cut asked while the warm-up runs waits for its end. */
  warmup?: boolean;
  onProgress?: (progress: Progress) => void;
  /** Aborts the model download: rejects with the signal's reason if one was given, else code `aborted`. */
  signal?: AbortSignal;
  /** Worker script URL (default: `worker.js` in `baseUrl`, else next to this module). */
  workerUrl?: string | URL;
}

export interface CutOptions {
  /** `cutout` (transparent background, default), `mask` (grey alpha), `color` (on a solid colour). In all
   * three the alpha is min(input alpha, model mask): what the input already hides stays hidden. */
  output?: Output;
  /** Background colour `#rrggbb` for `color` output and for `jpeg` cutouts (default `#ffffff`). */
  color?: string;
  /** `png` (default), `webp`, `jpeg`, or `raw` for an ImageData. */
  format?: Format;
  /** Encoder quality for webp/jpeg (0..1, default 0.92). */
  quality?: number;
  /**
   * Edge refinement (src/refine.js): a fast colour guided filter on the uncertain band of the mask at full
   * resolution, plus colour decontamination of the partly transparent pixels. Default: the manifest's
   * `refine.default`, shipped as `'auto'` = on when the photo is at least 2× the model's input size (where it
   * measurably helps), off for smaller photos. `true`/`false` force it.
   */
  refine?: boolean | 'auto';
  /** Aborts the cut: rejects with the signal's reason if one was given, else code `aborted`. */
  signal?: AbortSignal;
  /** This cut's steps as they start: decode, inference, mask (+ refinement, compose), encode. */
  onProgress?: (progress: CutProgress) => void;
  /** Filled in after the cut: milliseconds per stage inside the worker. */
  timing?: { decodeMs?: number; preprocessMs?: number; inferenceMs?: number; postprocessMs?: number; encodeMs?: number; totalMs?: number;
    /** Staged variants: per graph, its session creation and run time and the WASM heap size after it. */
    stages?: { name: string; sessionMs: number; runMs: number; heapBytes: number }[] };
}

export type CutStep = 'decode' | 'inference' | 'mask' | 'encode';

export interface CutProgress {
  type: 'progress';
  phase: 'cut';
  step: CutStep;
  /** Steps done before this one (0..3) of `total` (4). */
  loaded: number;
  total: number;
}

export interface CutManyOptions extends Omit<CutOptions, 'signal' | 'onProgress' | 'timing'> {
  /** Stops the batch after the photo being cut (which is still yielded); the iteration then ends, no error. */
  signal?: AbortSignal;
  onProgress?: (progress: CutManyProgress) => void;
}

export interface CutManyProgress {
  /** The input being cut (0-based) and its name (a File's `webkitRelativePath` or `name`, a URL's file name, else `image-<n>`). */
  index: number;
  name: string;
  /** `start`, then the cut's steps, then `done` or `error`. */
  step: 'start' | CutStep | 'done' | 'error';
  /** This photo's progress, 0..1. */
  photo: number;
  /** Inputs finished so far (cut or failed), of which failed. */
  completed: number;
  failed: number;
  /** How many inputs (an array's or array-like's length), null for an iterator. */
  total: number | null;
  /** The whole batch, 0..1 (null without `total`). */
  overall: number | null;
}

export type CutManyResult<R = Blob> =
  | { index: number; name: string; ok: true; result: R }
  | { index: number; name: string; ok: false; error: ClearCutError };

export interface CutterInfo {
  variant: string;
  backend: 'wasm' | 'webgpu';
  /** Why `auto` did not use WebGPU, or why WebGPU fell back to WASM. */
  fallbackReason: string | null;
  /** WASM threads (onnxruntime's pthread workers + its own); `null` on WebGPU. */
  threads: number | null;
  /** Why WASM runs on one thread, e.g. the page is not cross-origin isolated (no COOP/COEP headers), or
   * `numThreads: 1` was asked; `null` when it runs on several (or on WebGPU). */
  threadsReason: string | null;
  crossOriginIsolated: boolean;
  /** The network failed and the last manifest that loaded completely from this URL was used, with its
   * runtime, onnxruntime and model files from the Cache API; a new bundle is picked up once it is back. */
  offline: boolean;
  model: { name: string; licence: string; licence_note: string; description: string };
  inputSize: [number, number];
  /** Names of the graphs a staged variant runs in sequence, one session at a time; `null`: one graph. */
  stages: string[] | null;
  /** The graph the engine runs: the variant's name, or `<variant>:<engine>` for an engine's own graph of it
   * (e.g. `int8p2_68:webgpu`, decoded from the same download). */
  graph: string;
  /** The check of an engine's result on the probe input before it was trusted (WebGPU), or `null` when none ran.
   * `passed: false` comes with `backend: 'wasm'` and the numbers in `fallbackReason`. */
  probe: { engine: string; difference: number; tolerance: number; passed: boolean } | null;
}

export type CutInput = Blob | File | ImageBitmap | ImageData | HTMLImageElement | HTMLCanvasElement
  | OffscreenCanvas | ArrayBuffer | ArrayBufferView | string | URL;

export interface Cutter {
  readonly info: CutterInfo;
  cut(input: CutInput, options: CutOptions & { format: 'raw' }): Promise<ImageData>;
  cut(input: CutInput, options?: CutOptions): Promise<Blob>;
  /**
   * Cut inputs one at a time through this cutter (memory stays that of one cut), yielding each result as it
   * is ready, in order. An input that fails is yielded with `ok: false` and its error, and the batch goes
   * on; only a cutter that cannot cut any more (code `state`: disposed, `worker`: its worker died) throws.
   */
  cutMany(inputs: Iterable<CutInput> | AsyncIterable<CutInput>, options: CutManyOptions & { format: 'raw' }): AsyncGenerator<CutManyResult<ImageData>, void>;
  cutMany(inputs: Iterable<CutInput> | AsyncIterable<CutInput>, options?: CutManyOptions): AsyncGenerator<CutManyResult<Blob>, void>;
  /** Bytes of the worker's wasm memory (onnxruntime heap). */
  memory(): Promise<number>;
  /** Terminates the worker, freeing the model and its memory at once; pending and later calls reject with
   * code `state`. Calling it again does nothing. */
  dispose(): void;
}

export class ClearCutError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string);
}

export function createCutter(options?: CutterOptions): Promise<Cutter>;

/** The runtime's version (package.json's); the worker of the bundle at `baseUrl` must have the same major.minor. */
export const VERSION: string;
