// The probe (common/probe.py makes the same input and pooling): a fixed input whose expected alpha the export
// records per engine graph. The worker runs it on an engine it cannot vouch for (WebGPU: drivers and GPU
// precision vary) and falls back to WASM when the result is not the graph's.

/**
 * The probe as the graph's 1 × 3 × H × W input: a grey ramp (0.2 → 0.8 left to right) with a warm disc in the
 * middle, normalized with the manifest's mean and std (doubles rounded into float32, as numpy's astype does).
 * @param {[number, number]} size [height, width] @param {number[]} mean @param {number[]} std
 */
export function probeInput([h, w], mean, std) {
  const data = new Float32Array(3 * h * w);
  const disc = [0.9, 0.35, 0.2];
  const cy = (h - 1) / 2, cx = (w - 1) / 2, r = 0.3 * Math.min(h, w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const inDisc = (y - cy) ** 2 + (x - cx) ** 2 <= r * r;
      const ramp = 0.2 + (0.6 * x) / Math.max(w - 1, 1);
      for (let c = 0; c < 3; c++) data[c * h * w + y * w + x] = ((inDisc ? disc[c] : ramp) - mean[c]) / std[c];
    }
  }
  return { type: 'float32', data, dims: [1, 3, h, w] };
}

/** Means of an h × w alpha map over a cells × cells grid (cell edges at floor(i·h/cells)). */
export function pooled(alpha, h, w, cells) {
  const out = new Float64Array(cells * cells);
  for (let i = 0; i < cells; i++) {
    const y0 = Math.floor((i * h) / cells), y1 = Math.max(Math.floor(((i + 1) * h) / cells), y0 + 1);
    for (let j = 0; j < cells; j++) {
      const x0 = Math.floor((j * w) / cells), x1 = Math.max(Math.floor(((j + 1) * w) / cells), x0 + 1);
      let sum = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += alpha[y * w + x];
      out[i * cells + j] = sum / ((y1 - y0) * (x1 - x0));
    }
  }
  return out;
}

/**
 * How far an engine's alpha on the probe is from the recorded one: the mean abs difference of the pooled grids.
 * @param {Float32Array} alpha @param {[number, number]} size @param {import('./manifest').Probe} probe
 */
export function probeDifference(alpha, [h, w], probe) {
  const expected = Uint8Array.from(atob(probe.expected), (ch) => ch.charCodeAt(0));
  const grid = pooled(alpha, h, w, probe.cells);
  let sum = 0;
  for (let i = 0; i < grid.length; i++) sum += Math.abs(grid[i] - expected[i] / 255);
  return sum / grid.length;
}
