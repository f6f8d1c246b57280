// Types of the bundle manifest, `manifest.json`, exactly as web_runtime/build_bundle.py writes it.
// Kept simple on purpose (`interface X { field: type; }`, one field per line): a Python test parses these
// declarations and checks the field names against common/manifest_schema.py (tests/browser/test_manifest_contract.py).

/** Schema tag of this layout; the worker refuses any other. */
export type BundleSchema = 'clearcut.bundle/1';

export interface BundleManifest {
  schema: BundleSchema;
  model: ModelInfo;
  preprocessing: Preprocessing;
  output: OutputSpec;
  refine: RefineParams;
  variants: Record<string, Variant>;
  default_variant: string;
  runtime: RuntimeFiles;
  files: Record<string, FileEntry>;
  versions: Versions;
  source: SourceRecord;
}

export interface ModelInfo {
  name: string;
  architecture: string;
  description: string;
  licence: string;
  licence_note: string;
}

/** x = (rgb / scale − mean) / std after resizing the whole photo to `input_size` ([height, width]). */
export interface Preprocessing {
  input_size: [number, number];
  mean: [number, number, number];
  std: [number, number, number];
  scale: number | 'max';
  resize: 'bilinear';
  channel_order: 'RGB';
  layout: 'NCHW';
}

/** Which graph input takes the photo and which output is the alpha map (in [0, 1]). */
export interface OutputSpec {
  select: number[];
  sigmoid_in_model: boolean;
  minmax_normalize: boolean;
  range: [number, number];
  input_name: string;
  output_name: string;
}

/** Edge-refinement constants, a copy of web_runtime/refine.json (read by src/refine.js). */
export interface RefineParams {
  comment?: string;
  default: boolean | 'auto';
  auto_min_upscale: number;
  work_max_side: number;
  radius: number;
  eps: number;
  uncertain: [number, number];
  band_radius: number;
  decontaminate: boolean;
  fg_radius_large: number;
  fg_radius_small: number;
}

/** One model variant: either one graph (`chunks`) or graphs run in sequence (`stages`). With `coded`, the
 * chunks are a weight container the runtime decodes into the graph's `bytes` (sha256 `sha256`). */
export interface Variant {
  bytes: number;
  sha256?: string;
  gzip_bytes: number | null;
  parity: Parity | null;
  cpu_latency_ms: number | null;
  backends: Backend[];
  session_config?: Record<string, string>;
  webgpu_features: string[];
  chunks?: Chunk[];
  stages?: Stage[];
  coded?: Coded;
  engines?: Record<string, EngineGraph>;
}

/** The graph one engine runs for a variant instead of the variant's own, decoded from the same container. */
export interface EngineGraph {
  graph: string;
  bytes: number;
  sha256: string;
  session_config: Record<string, string>;
  webgpu_features: string[];
  probe: Probe;
}

/** An engine graph's expected alpha on the probe input (common/probe.py, src/probe.js). */
export interface Probe {
  version: number;
  cells: number;
  expected: string;
  tolerance: number;
}

/** The chunks of a coded variant hold a weight container of this format (quantize/ccw.py; src/ccw.js decodes it). */
export interface Coded {
  format: 'ccw1';
  bytes: number;
  sha256: string;
}

export type Backend = 'wasm' | 'webgpu';

/** The pipeline's parity gate figures of a variant against the fp32 torch reference. */
export interface Parity {
  max_abs: number;
  mean_abs: number;
  iou_mean: number;
  iou_worst: number;
  worst_image: string;
  passed: boolean;
}

/** A graph of a staged variant: its model file as chunks, and the tensors it reads and writes by name. */
export interface Stage {
  name: string;
  bytes: number;
  sha256: string;
  inputs: string[];
  outputs: string[];
  session_config: Record<string, string>;
  chunks: Chunk[];
}

/** A piece of a model file, named by its sha256; the runtime verifies it before use. */
export interface Chunk {
  path: string;
  sha256: string;
  bytes: number;
  integrity: string;
}

/** Where the runtime's files are; `zip`: the ZIP writer (npm fflate's browser build) of the demo page's
 * "Download all", listed in `files` like the rest (bundles built before it lack it). */
export interface RuntimeFiles {
  module: string;
  worker: string;
  ort: Partial<Record<Backend, string>>;
  ort_dir: string;
  zip?: string;
}

/** Size and hashes of a runtime, onnxruntime-web or demo-page library file of the bundle. */
export interface FileEntry {
  bytes: number;
  sha256: string;
  integrity: string;
}

export interface Versions {
  'clearcut-runtime': string;
  'onnxruntime-web': string;
  fflate?: string;
  build_tools: Record<string, string>;
}

/** Where the weights came from (a pinned download, or a user-supplied file). */
export interface SourceRecord {
  file?: string;
  sha256?: string;
  origin?: string;
  url?: string;
  container_sha256?: string;
  member?: string | null;
  format?: string;
}
