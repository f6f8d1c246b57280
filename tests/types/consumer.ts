// What an integrator's TypeScript sees of the runtime's declarations (web_runtime/src/clearcut.d.ts): compiled with
// `tsc --noEmit` by tests/test_types.py. Lines marked @ts-expect-error must NOT compile.
import { ClearCutError, createCutter, type CutterInfo } from '../../web_runtime/src/clearcut.js';

export async function consumer(file: File): Promise<void> {
  const cutter = await createCutter({ manifestUrl: '/models/manifest.json', backend: 'auto' });
  const info: CutterInfo = cutter.info;
  const engine: 'wasm' | 'webgpu' = info.backend;
  const graph: string = info.graph;
  const trusted: boolean | undefined = info.probe?.passed;

  const png: Blob = await cutter.cut(file); // no options: a PNG Blob
  const webp: Blob = await cutter.cut(file, { format: 'webp' });
  const raw: ImageData = await cutter.cut(file, { format: 'raw' });
  // @ts-expect-error a Blob is not ImageData
  const wrong: ImageData = await cutter.cut(file);

  for await (const item of cutter.cutMany([file])) {
    if (item.ok) {
      const blob: Blob = item.result;
      void blob;
    } else {
      const error: ClearCutError = item.error;
      void error.code;
    }
  }
  for await (const item of cutter.cutMany([file], { format: 'raw' })) {
    if (item.ok) {
      const data: ImageData = item.result;
      void data;
    }
  }
  const heap: number = await cutter.memory();
  cutter.dispose();
  void [engine, graph, trusted, png, webp, raw, wrong, heap];
}
