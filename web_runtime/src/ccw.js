// The `.ccw` weight container (format "ccw1", specified byte by byte in quantize/ccw.py): an int8 QDQ ONNX file
// whose coded weight tensors are stored as per-row palette indices of fewer than 8 bits; version 2 carries more
// graphs on the same coded weights (e.g. the float-activation graph WebGPU runs). `decodeContainer` rebuilds
// the exact ONNX bytes of one graph and refuses (ClearCutError `integrity`) a container whose own sha256, or whose
// decoded bytes' sha256, does not match. No dependencies; the worker calls it between download and session.
import { ClearCutError } from './errors.js';
import { sha256Hex } from './store.js';

export const CCW_FORMAT = 'ccw1';
const MAGIC = [0x43, 0x43, 0x57, 0x31]; // "CCW1"
const VERSIONS = [1, 2]; // 1: one graph; 2: more graphs on the same coded weights
const HEADER_BYTES = 96;
const RECORD_BYTES = 24;
const GRAPH_BYTES = 64; // an extra graph's name (16), sha256 (32), onnx and skeleton lengths (u64 each)

const corrupt = (why) => new ClearCutError('integrity',
  `The model's weight container is corrupt or was altered (${why}): it was not used or cached; redeploy the bundle.`);

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * The header, tensor table and graphs of a container, checked for shape (not yet for its sha256). Each graph:
 * {name ('' for the first), sha256, onnxLength, skeletonLength, skeletonAt, offsets (of the table's tensors)}.
 * @param {Uint8Array} c
 */
export function readHeader(c) {
  if (c.length < HEADER_BYTES || MAGIC.some((b, i) => c[i] !== b)) throw corrupt('bad magic');
  const view = new DataView(c.buffer, c.byteOffset, c.byteLength);
  const u64 = (at) => view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
  const version = view.getUint32(4, true);
  const extra = view.getUint32(92, true);
  if (!VERSIONS.includes(version) || (version === 1) !== (extra === 0)) {
    throw corrupt(`version ${version}, this runtime reads ${VERSIONS.join(' and ')}`);
  }
  const count = view.getUint32(88, true);
  const header = { bodySha256: hex(c.subarray(8, 40)), count, records: [], graphs: [] };
  const tableEnd = HEADER_BYTES + count * RECORD_BYTES;
  if (tableEnd > c.length) throw corrupt('tensor table beyond the end');
  const first = { name: '', sha256: hex(c.subarray(40, 72)), onnxLength: u64(72), skeletonLength: u64(80),
    skeletonAt: tableEnd, offsets: [] };
  let coded = 0;
  for (let i = 0; i < count; i++) {
    const at = HEADER_BYTES + i * RECORD_BYTES;
    const r = { rows: view.getUint32(at + 8, true), columns: view.getUint32(at + 12, true), bits: c[at + 16], width: c[at + 17] };
    if (!(r.bits >= 1 && r.bits <= r.width && r.width <= 8)) throw corrupt(`tensor ${i} has bad bits or width`);
    first.offsets.push(u64(at));
    coded += r.rows * r.columns;
    header.records.push(r);
  }
  header.graphs.push(first);
  let at = tableEnd + first.skeletonLength;
  for (let g = 0; g < extra; g++) {
    if (at + GRAPH_BYTES + 8 * count > c.length) throw corrupt('graph table beyond the end');
    const nameBytes = c.subarray(at, at + 16);
    const zero = nameBytes.indexOf(0);
    const graph = { name: new TextDecoder().decode(zero < 0 ? nameBytes : nameBytes.subarray(0, zero)),
      sha256: hex(c.subarray(at + 16, at + 48)), onnxLength: u64(at + 48), skeletonLength: u64(at + 56), offsets: [] };
    at += GRAPH_BYTES;
    for (let i = 0; i < count; i++, at += 8) graph.offsets.push(u64(at));
    graph.skeletonAt = at;
    at += graph.skeletonLength;
    header.graphs.push(graph);
  }
  for (const graph of header.graphs) {
    let end = 0;
    graph.offsets.forEach((offset, i) => {
      const length = header.records[i].rows * header.records[i].columns;
      if (offset < end || offset + length > graph.onnxLength) throw corrupt(`tensor ${i} out of order or out of range`);
      end = offset + length;
    });
    if (graph.skeletonLength + coded !== graph.onnxLength) throw corrupt('inconsistent lengths');
  }
  for (const r of header.records) {
    r.palettesAt = at;
    r.indicesAt = at + r.rows * (1 << r.bits);
    at = r.indicesAt + Math.ceil((r.rows * r.columns * r.width) / 8);
  }
  if (at !== c.length) throw corrupt('inconsistent lengths');
  return header;
}

/**
 * Indices of one tensor → its int8 bytes: out[r·columns + c] = palette[r][index]. `src` holds the little-endian
 * bit stream of `width`-bit indices; `pal` the rows × 2**bits palette bytes. Widths 8, 4, 2 and 1 never straddle
 * a byte and run on byte-wise loops; the packed widths 3, 5, 6, 7 on groups of 8 indices (`width` bytes) read
 * as one or two 32-bit words; a row's first and last indices outside whole bytes or groups on a bit reader.
 * @param {Uint8Array} out @param {Uint8Array} pal @param {Uint8Array} src
 */
function decodeTensor(out, pal, src, rows, columns, bits, width) {
  const size = 1 << bits;
  const mask = (1 << width) - 1;
  if (width === 8) {
    for (let r = 0, o = 0; r < rows; r++) {
      const p = r * size;
      for (const end = o + columns; o < end; o++) out[o] = pal[p + src[o]];
    }
    return;
  }
  let acc = 0; // bits not yet used, lowest first
  let n = 0; // how many
  let s = 0; // next byte of src
  const perByte = 8 / width;
  const aligned = width === 1 || width === 2 || width === 4;
  const hiShift = 8 * (width - 4); // first bit of the group's second word (widths 5..7)
  for (let r = 0, o = 0; r < rows; r++) {
    const p = r * size;
    let left = columns;
    if (!aligned) {
      // up to the next group of 8 indices (byte-aligned), then whole groups
      for (let head = (8 - (o & 7)) & 7; head > 0 && left > 0; head--, left--) {
        if (n < width) { acc |= src[s++] << n; n += 8; }
        out[o++] = pal[p + (acc & mask)];
        acc >>>= width;
        n -= width;
      }
      let groups = left >>> 3;
      left &= 7;
      if (width === 3) {
        for (; groups > 0; groups--, s += 3) {
          const v = src[s] | (src[s + 1] << 8) | (src[s + 2] << 16);
          out[o++] = pal[p + (v & 7)]; out[o++] = pal[p + ((v >>> 3) & 7)];
          out[o++] = pal[p + ((v >>> 6) & 7)]; out[o++] = pal[p + ((v >>> 9) & 7)];
          out[o++] = pal[p + ((v >>> 12) & 7)]; out[o++] = pal[p + ((v >>> 15) & 7)];
          out[o++] = pal[p + ((v >>> 18) & 7)]; out[o++] = pal[p + (v >>> 21)];
        }
      } else {
        for (; groups > 0; groups--, s += width) {
          const lo = src[s] | (src[s + 1] << 8) | (src[s + 2] << 16) | (src[s + 3] << 24);
          const e = s + width - 4;
          const hi = src[e] | (src[e + 1] << 8) | (src[e + 2] << 16) | (src[e + 3] << 24);
          out[o++] = pal[p + (lo & mask)]; out[o++] = pal[p + ((lo >>> width) & mask)];
          out[o++] = pal[p + ((lo >>> (2 * width)) & mask)]; out[o++] = pal[p + ((lo >>> (3 * width)) & mask)];
          out[o++] = pal[p + ((hi >>> (4 * width - hiShift)) & mask)];
          out[o++] = pal[p + ((hi >>> (5 * width - hiShift)) & mask)];
          out[o++] = pal[p + ((hi >>> (6 * width - hiShift)) & mask)];
          out[o++] = pal[p + ((hi >>> (7 * width - hiShift)) & mask)];
        }
      }
    } else {
      // finish the byte a previous row started, then whole bytes, then the start of the last byte
      while (n > 0 && left > 0) { out[o++] = pal[p + (acc & mask)]; acc >>>= width; n -= width; left--; }
      let whole = (left / perByte) | 0;
      left -= whole * perByte;
      if (width === 4) {
        for (; whole > 0; whole--) { const b = src[s++]; out[o++] = pal[p + (b & 15)]; out[o++] = pal[p + (b >>> 4)]; }
      } else if (width === 2) {
        for (; whole > 0; whole--) {
          const b = src[s++];
          out[o++] = pal[p + (b & 3)]; out[o++] = pal[p + ((b >>> 2) & 3)];
          out[o++] = pal[p + ((b >>> 4) & 3)]; out[o++] = pal[p + (b >>> 6)];
        }
      } else {
        for (; whole > 0; whole--) {
          const b = src[s++];
          out[o++] = pal[p + (b & 1)]; out[o++] = pal[p + ((b >>> 1) & 1)];
          out[o++] = pal[p + ((b >>> 2) & 1)]; out[o++] = pal[p + ((b >>> 3) & 1)];
          out[o++] = pal[p + ((b >>> 4) & 1)]; out[o++] = pal[p + ((b >>> 5) & 1)];
          out[o++] = pal[p + ((b >>> 6) & 1)]; out[o++] = pal[p + (b >>> 7)];
        }
      }
    }
    for (; left > 0; left--) {
      if (n < width) { acc |= src[s++] << n; n += 8; }
      out[o++] = pal[p + (acc & mask)];
      acc >>>= width;
      n -= width;
    }
  }
}

/**
 * The ONNX bytes of one graph of a container (the first, or the extra graph `graph`), verified: the container's
 * sha256 (its header), the decoded bytes' sha256 against the container's record and against `expected` (the
 * manifest's sha256 and length of that graph). Anything that does not match is a ClearCutError `integrity`.
 * @param {Uint8Array} container
 * @param {{sha256: string, bytes: number}} expected
 * @param {(p: {loaded: number, total: number}) => void} [onProgress] weights decoded so far, of all coded weights
 * @param {string} [graph] '' (the first graph) or an extra graph's name, e.g. 'webgpu'
 * @returns {Promise<Uint8Array>}
 */
export async function decodeContainer(container, expected, onProgress, graph = '') {
  const h = readHeader(container);
  if ((await sha256Hex(container.subarray(40))) !== h.bodySha256) throw corrupt('its sha256 does not match its header');
  const g = h.graphs.find((x) => x.name === graph);
  if (!g) throw corrupt(`it has no graph "${graph}" (it has ${h.graphs.map((x) => x.name || '(first)').join(', ')})`);
  if (g.sha256 !== expected.sha256 || g.onnxLength !== expected.bytes) {
    throw corrupt(`it decodes to ${g.onnxLength} bytes, sha256 ${g.sha256}; the manifest lists ${expected.bytes} bytes, ${expected.sha256}`);
  }
  const out = new Uint8Array(g.onnxLength);
  const total = g.onnxLength - g.skeletonLength;
  let loaded = 0;
  let reported = 0;
  onProgress?.({ loaded, total });
  let cursor = 0;
  let skel = g.skeletonAt;
  h.records.forEach((r, i) => {
    const offset = g.offsets[i];
    const gap = offset - cursor;
    out.set(container.subarray(skel, skel + gap), cursor);
    skel += gap;
    const length = r.rows * r.columns;
    decodeTensor(out.subarray(offset, offset + length), container.subarray(r.palettesAt, r.indicesAt),
      container.subarray(r.indicesAt, r.indicesAt + Math.ceil((length * r.width) / 8)), r.rows, r.columns, r.bits, r.width);
    cursor = offset + length;
    loaded += length;
    if (onProgress && loaded - reported >= total / 32) { reported = loaded; onProgress({ loaded, total }); }
  });
  out.set(container.subarray(skel, skel + (g.onnxLength - cursor)), cursor);
  if (reported !== loaded) onProgress?.({ loaded, total });
  const actual = await sha256Hex(out);
  if (actual !== g.sha256) throw corrupt(`the decoded model's sha256 ${actual} is not the ${g.sha256} it records`);
  return out;
}
