// The same onnxruntime-web WASM engine as the browser bundle, in Node: separates what the browser costs
// from what WASM costs against native onnxruntime. Used by bench_web.py.
//   node web_runtime/bench_node_wasm.mjs MODEL.onnx HEIGHT WIDTH THREADS RUNS '{"session.x":"1"}'
import * as ort from 'onnxruntime-web';
import { readFileSync } from 'node:fs';

const [model, height, width, threads, runs, config = '{}'] = process.argv.slice(2);
ort.env.wasm.numThreads = Number(threads);
const session = await ort.InferenceSession.create(readFileSync(model), {
  executionProviders: ['wasm'], graphOptimizationLevel: 'all', extra: JSON.parse(config),
});
const shape = [1, 3, Number(height), Number(width)];
const data = new Float32Array(shape.reduce((a, b) => a * b));
for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.5;
const times = [];
for (let i = 0; i <= Number(runs); i++) { // the first run is the warm-up
  const start = performance.now();
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', data, shape) });
  if (i > 0) times.push(performance.now() - start);
  for (const t of Object.values(out)) t.dispose?.();
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ median_ms: times[Math.floor(times.length / 2)], runs: times.length, threads: Number(threads) }));
process.exit(0);
