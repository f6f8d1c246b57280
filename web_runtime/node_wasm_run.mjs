// Runs a graph on onnxruntime-web's WASM engine in Node: the same npm package, wasm build and session options
// as the browser bundle (src/engine_ort.js), so a parity gate can check the numbers browser users get. WASM
// arithmetic does not depend on the CPU the way native onnxruntime's AVX2 / AVX-512 / VNNI kernels do.
// Driven by eval/wasm_engine.py:
//   node web_runtime/node_wasm_run.mjs JOB.json
// JOB.json: {"model": "x.onnx", "threads": 2, "session_config": {...}, "input_name": "input" | null (the first),
//            "input_shape": [1, 3, H, W], "inputs": "in.f32", "output": "out.f32"}
// `inputs` holds N float32 little-endian inputs back to back; each is read only when it runs (N 1024² inputs
// would be hundreds of MB). The first output of each run is appended, raw float32, to `output`. stdout gets one
// JSON line at the end, {"count", "output_shape", "seconds"}; stderr gets `progress i/N` lines.
import * as ort from 'onnxruntime-web';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';

function fail(message) {
  process.stderr.write(`node_wasm_run: ${message}\n`);
  process.exit(1);
}

async function main(jobPath) {
  if (!jobPath) fail('usage: node node_wasm_run.mjs JOB.json');
  let job;
  try {
    job = JSON.parse(readFileSync(jobPath, 'utf8'));
  } catch (err) {
    fail(`cannot read job file ${jobPath}: ${err.message}`);
  }
  const { model, inputs, output, input_shape: shape } = job;
  const threads = job.threads ?? 2;
  if (!model || !existsSync(model)) fail(`model file not found: ${model}`);
  if (!inputs || !existsSync(inputs)) fail(`inputs file not found: ${inputs}`);
  if (!output) fail('job has no output path');
  if (!Array.isArray(shape) || !shape.length || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    fail(`bad input_shape ${JSON.stringify(shape)}: a list of positive integers is needed`);
  }
  if (!Number.isInteger(threads) || threads < 1) fail(`bad threads ${threads}: a positive integer is needed`);

  // A fixed thread count: the default (the machine's cores) would make results depend on the machine.
  ort.env.wasm.numThreads = threads;
  let session;
  try {
    session = await ort.InferenceSession.create(readFileSync(model), {
      graphOptimizationLevel: 'all', extra: { ...(job.session_config || {}) }, executionProviders: ['wasm'],
    });
  } catch (err) {
    fail(`could not create a session for ${model}: ${err.message ?? err}`);
  }
  const inputName = job.input_name ?? session.inputNames[0];
  if (!session.inputNames.includes(inputName)) {
    fail(`the graph has no input ${JSON.stringify(inputName)}; its inputs: ${session.inputNames.join(', ')}`);
  }
  const outputName = session.outputNames[0];

  const elements = shape.reduce((a, b) => a * b, 1);
  const inputBytes = elements * 4;
  const inFd = openSync(inputs, 'r');
  const total = fstatSync(inFd).size;
  if (total === 0 || total % inputBytes) {
    fail(`inputs file has ${total} bytes, not a whole number of ${JSON.stringify(shape)} float32 inputs (${inputBytes} bytes each)`);
  }
  const count = total / inputBytes;
  const outFd = openSync(output, 'w');
  const buffer = Buffer.alloc(inputBytes);
  let outputShape = null;
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    if (readSync(inFd, buffer, 0, inputBytes, i * inputBytes) !== inputBytes) fail(`short read of input ${i}`);
    // a fresh copy: the tensor must not alias the read buffer the next input overwrites
    const data = new Float32Array(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + inputBytes));
    let results;
    try {
      results = await session.run({ [inputName]: new ort.Tensor('float32', data, shape) });
    } catch (err) {
      fail(`run ${i + 1}/${count} failed: ${err.message ?? err}`);
    }
    const out = results[outputName];
    if (out.type !== 'float32') fail(`output ${outputName} is ${out.type}, not float32`);
    outputShape = [...out.dims];
    writeSync(outFd, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
    for (const t of Object.values(results)) t.dispose?.();
    process.stderr.write(`progress ${i + 1}/${count}\n`);
  }
  closeSync(inFd);
  closeSync(outFd);
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(JSON.stringify({ count, output_shape: outputShape, output_name: outputName, seconds }) + '\n');
}

main(process.argv[2]).then(
  () => process.exit(0), // onnxruntime's pthread workers would keep Node alive
  (err) => fail(err?.stack ?? String(err)),
);
