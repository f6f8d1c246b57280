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
   * `warmup`: one run on a blank input so that the first real cut is as fast as the next ones;
   * `stage`: a cut of a staged variant entering graph `stage` (`null` when the last one is done). */
  phase: 'download' | 'session' | 'warmup' | 'stage';
  stage?: string | null;
  loaded: number;
  total: number;
  fromCache?: boolean;
}

export interface CutterOptions {
  /** URL of the bundle's manifest.json (default: `manifest.json` next to the page). */
  manifestUrl?: string;
  /** Variant name from the manifest (default: the manifest's `default_variant`). */
  variant?: string;
  /** `wasm` (default), `webgpu`, or `auto` (WebGPU on a hardware adapter, else WASM, with the reason in `info`). */
  backend?: Backend;
  /** Images above this many pixels are refused with a `too-large` error (default 40 000 000). */
  maxPixels?: number;
  /** WASM threads when cross-origin isolated (default: hardware concurrency, at most 4). */
  numThreads?: number;
  /** Run the model once on a blank input before `createCutter` resolves (default true): the first cut is
   * then as fast as later ones instead of paying onnxruntime's first-run setup. */
  warmup?: boolean;
  onProgress?: (progress: Progress) => void;
  /** Aborts the model download: rejects with the signal's reason if one was given, else code `aborted`. */
  signal?: AbortSignal;
  /** Worker script URL (default: `worker.js` next to this module). */
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
  /** Filled in after the cut: milliseconds per stage inside the worker. */
  timing?: { decodeMs?: number; preprocessMs?: number; inferenceMs?: number; postprocessMs?: number; encodeMs?: number; totalMs?: number;
    /** Staged variants: per graph, its session creation and run time and the WASM heap size after it. */
    stages?: { name: string; sessionMs: number; runMs: number; heapBytes: number }[] };
}

export interface CutterInfo {
  variant: string;
  backend: 'wasm' | 'webgpu';
  /** Why `auto` did not use WebGPU, or why WebGPU fell back to WASM. */
  fallbackReason: string | null;
  threads: number | null;
  crossOriginIsolated: boolean;
  model: { name: string; licence: string; licence_note: string; description: string };
  inputSize: [number, number];
  /** Names of the graphs a staged variant runs in sequence, one session at a time; `null`: one graph. */
  stages: string[] | null;
}

export type CutInput = Blob | File | ImageBitmap | ImageData | HTMLImageElement | HTMLCanvasElement
  | OffscreenCanvas | ArrayBuffer | ArrayBufferView | string | URL;

export interface Cutter {
  readonly info: CutterInfo;
  cut(input: CutInput, options?: CutOptions & { format: 'raw' }): Promise<ImageData>;
  cut(input: CutInput, options?: CutOptions): Promise<Blob>;
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
