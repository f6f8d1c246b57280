"""The ``.ccw`` container ("ClearCut weights"): an int8 QDQ ONNX file whose int8 weight tensors are stored as
per-row palette indices of fewer than 8 bits, and from which the exact ONNX bytes are rebuilt.

A coded tensor is an INT8 initializer whose ``raw_data`` holds ``rows × columns`` bytes (row-major; for a
Conv weight rows = Cout, columns = Cin·kh·kw) and whose every row uses at most ``2**bits`` distinct values.
The container stores the ONNX file with those ``raw_data`` payloads cut out (the *skeleton*: every other
byte, including each payload's protobuf tag and length, stays as it was) and, per coded tensor, its palettes
and indices. Decoding splices the rebuilt payloads back at their offsets; no protobuf is parsed.

Format, version 1. All integers little-endian; offsets in bytes.

    0    4   magic  b"CCW1"
    4    4   u32 version = 1
    8   32   sha256 of the container bytes [40, end)            — a corrupt container is refused
    40  32   sha256 of the decoded ONNX file                     — a wrong decode is refused
    72   8   u64 onnx_length       length of the decoded ONNX file
    80   8   u64 skeleton_length   = onnx_length − Σ rows·columns
    88   4   u32 count             number of coded tensors
    92   4   u32 reserved = 0
    96  24·count  tensor table, sorted by onnx_offset, ranges disjoint:
            u64 onnx_offset   where the tensor's rows·columns bytes start in the decoded file
            u32 rows
            u32 columns
            u8  bits          palette entries per row: 2**bits (1..8)
            u8  width         bits per stored index (bits..8)
            u16 reserved = 0
            u32 reserved = 0
    then    skeleton_length bytes: the ONNX file without the coded payloads
    then    per tensor, in table order:
            palettes: rows × 2**bits int8, row after row (a row's unused entries repeat its last value)
            indices:  ceil(rows·columns·width / 8) bytes: index i (row-major over rows × columns) occupies
                      bits [i·width, (i+1)·width) of the little-endian bit stream, i.e. it starts at bit
                      (i·width) mod 8 (bit 0 = least significant) of byte ⌊i·width / 8⌋ and may continue in
                      the next byte; the last byte's unused high bits are 0.
    end     (nothing follows)

Decode: out = new Uint8Array(onnx_length); copy the skeleton into the gaps between the tensors' ranges in
order; for each tensor, out[onnx_offset + r·columns + c] = palette[r][index(r·columns + c)]; check the
sha256. The encoder is deterministic: a row's palette is its distinct values in ascending order, so the
container is a function of the ONNX bytes, the coded tensors and their (bits, width).

Version 2: more graphs on the same coded weights (e.g. the graph another engine runs, quantize/engine_graphs.py).
The u32 at 92 counts them (version 1: 0); they sit between the first graph's skeleton and the payloads:

    per extra graph:
            16 bytes  its name, ASCII, zero-padded (e.g. b"webgpu")
            32 bytes  sha256 of its decoded ONNX file
            u64 onnx_length, u64 skeleton_length
            count × u64 onnx_offset: where tensor i of the table starts in this graph (ascending)
            skeleton_length bytes: this graph without the coded payloads
    then the payloads, as in version 1.

Each tensor's payload is the same bytes in every graph; a graph decodes exactly like the first one, with its
own offsets and skeleton. A container without extra graphs is written as version 1.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Mapping

import numpy as np

MAGIC = b"CCW1"
VERSION = 1  # one graph
VERSION_GRAPHS = 2  # more graphs on the same coded weights
GRAPH_NAME_BYTES = 16
GRAPH = struct.Struct("<16s32sQQ")  # an extra graph's fixed part (64 bytes), then its offsets and skeleton
HEADER = struct.Struct("<4sI32s32sQQII")  # 96 bytes
RECORD = struct.Struct("<QIIBBHI")  # 24 bytes
ALIGNED_WIDTHS = (1, 2, 4, 8)  # index widths that never straddle a byte


class ContainerError(ValueError):
    """A container that cannot be decoded: bad magic or version, corrupt bytes, inconsistent tables."""


@dataclass(frozen=True)
class TensorRecord:
    onnx_offset: int
    rows: int
    columns: int
    bits: int
    width: int

    @property
    def length(self) -> int:
        return self.rows * self.columns

    @property
    def palette_bytes(self) -> int:
        return self.rows << self.bits

    @property
    def index_bytes(self) -> int:
        return (self.length * self.width + 7) // 8


# ---------------------------------------------------------------- locating raw_data in an ONNX file

def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | memoryview, start: int, end: int):
    """(field number, wire type, payload start, payload end or value) of a protobuf message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, wire, value, pos
        elif wire == 1:
            yield field, wire, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield field, wire, pos, pos + length
            pos += length
        elif wire == 5:
            yield field, wire, pos, pos + 4
            pos += 4
        else:
            raise ContainerError(f"unsupported protobuf wire type {wire} at byte {pos}")
    if pos != end:
        raise ContainerError("protobuf message overruns its length")


def initializer_payloads(onnx_bytes: bytes) -> dict[str, tuple[int, int]]:
    """Initializer name → (offset, length) of its ``raw_data`` payload in the serialized ModelProto
    (ModelProto.graph = field 7, GraphProto.initializer = 5, TensorProto.name = 8, raw_data = 9)."""
    view = memoryview(onnx_bytes)
    found: dict[str, tuple[int, int]] = {}
    for field, wire, start, end in _fields(view, 0, len(view)):
        if field != 7 or wire != 2:
            continue
        for g_field, g_wire, g_start, g_end in _fields(view, start, end):
            if g_field != 5 or g_wire != 2:
                continue
            name, raw = None, None
            for t_field, t_wire, t_start, t_end in _fields(view, g_start, g_end):
                if t_field == 8 and t_wire == 2:
                    name = bytes(view[t_start:t_end]).decode()
                elif t_field == 9 and t_wire == 2:
                    raw = (t_start, t_end - t_start)
            if name is not None and raw is not None:
                found[name] = raw
    return found


# ---------------------------------------------------------------- indices and palettes

def pack_indices(indices: np.ndarray, width: int) -> bytes:
    """Little-endian bit stream of ``width``-bit indices (see the module docstring)."""
    flat = np.ascontiguousarray(indices, dtype=np.uint8).reshape(-1)
    if width == 8:
        return flat.tobytes()
    bits = np.unpackbits(flat[:, None], axis=1, count=width, bitorder="little")
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 8:
        return raw[:count]
    bits = np.unpackbits(raw, bitorder="little", count=count * width).reshape(count, width)
    return np.packbits(bits, axis=1, bitorder="little").reshape(count)


def row_palettes(q: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical palettes (rows × 2**bits int8: each row's distinct values ascending, then its last value
    repeated) and indices (rows × columns uint8) of the int8 matrix ``q``."""
    rows, _ = q.shape
    size = 1 << bits
    order = np.sort(q, axis=1).astype(np.int16)
    new = np.ones_like(order, dtype=bool)
    new[:, 1:] = order[:, 1:] != order[:, :-1]
    counts = new.sum(axis=1)
    if counts.max() > size:
        row = int(np.argmax(counts))
        raise ValueError(f"row {row} has {counts[row]} distinct values, more than 2**{bits}")
    palettes = np.empty((rows, size), np.int8)
    indices = np.empty(q.shape, np.uint8)
    for r in range(rows):
        values = order[r][new[r]]
        palettes[r, :len(values)] = values
        palettes[r, len(values):] = values[-1]
        indices[r] = np.searchsorted(values, q[r].astype(np.int16))
    return palettes, indices


# ---------------------------------------------------------------- encode / decode

@dataclass(frozen=True)
class Graph:
    """One graph of a container: its name ("" for the first), decoded sha256 and length, where each coded
    tensor starts in it, and where its skeleton lies in the container."""

    name: str
    sha256: bytes
    onnx_length: int
    skeleton_length: int
    offsets: tuple[int, ...]
    skeleton_at: int


def _skeleton(onnx_bytes: bytes, spans: list[tuple[int, int]]) -> bytes:
    parts, cursor = [], 0
    for offset, length in spans:
        if offset < cursor:
            raise ValueError("coded tensors overlap or are out of order")
        parts.append(onnx_bytes[cursor:offset])
        cursor = offset + length
    parts.append(onnx_bytes[cursor:])
    return b"".join(parts)


def encode(onnx_bytes: bytes, tensors: Mapping[str, tuple[int, int, int]],
           graphs: Mapping[str, bytes] | None = None) -> bytes:
    """The container of ``onnx_bytes`` with the named INT8 initializers coded; ``tensors``: name →
    (bits, width, columns). ``columns`` splits the payload into rows (e.g. Cin·kh·kw of a Conv weight).
    ``graphs``: more ONNX files by name whose initializers of those names hold the same bytes (version 2)."""
    where = initializer_payloads(onnx_bytes)
    missing = [name for name in tensors if name not in where]
    if missing:
        raise ValueError(f"not initializers with raw_data in this ONNX file: {missing[:5]}")
    order = sorted(tensors, key=lambda n: where[n][0])
    records, payloads = [], []
    for name in order:
        bits, width, columns = tensors[name]
        offset, length = where[name]
        if not 1 <= bits <= width <= 8 or columns <= 0 or length % columns:
            raise ValueError(f"{name}: bits {bits}, width {width}, columns {columns} do not fit {length} bytes")
        q = np.frombuffer(onnx_bytes, np.int8, length, offset).reshape(length // columns, columns)
        try:
            palettes, indices = row_palettes(q, bits)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        records.append(TensorRecord(offset, q.shape[0], columns, bits, width))
        payloads += [palettes.tobytes(), pack_indices(indices, width)]
    skeleton_bytes = _skeleton(onnx_bytes, [(r.onnx_offset, r.length) for r in records])
    extras = []
    for graph_name, data in (graphs or {}).items():
        raw = graph_name.encode("ascii")
        if not 0 < len(raw) <= GRAPH_NAME_BYTES or b"\0" in raw:
            raise ValueError(f"graph name {graph_name!r}: 1 to {GRAPH_NAME_BYTES} ASCII characters")
        there = initializer_payloads(data)
        spans = []
        for name, record in zip(order, records):
            offset, length = there.get(name, (None, None))
            if offset is None or data[offset:offset + length] != onnx_bytes[record.onnx_offset:record.onnx_offset + record.length]:
                raise ValueError(f"graph {graph_name!r}: initializer {name} is missing or holds other bytes")
            spans.append((offset, length))
        if any(b[0] < a[0] for a, b in zip(spans, spans[1:])):
            raise ValueError(f"graph {graph_name!r}: the coded initializers are in another order")
        skeleton = _skeleton(data, spans)
        extras.append(GRAPH.pack(raw, hashlib.sha256(data).digest(), len(data), len(skeleton))
                      + struct.pack(f"<{len(spans)}Q", *(o for o, _ in spans)) + skeleton)
    table = b"".join(RECORD.pack(r.onnx_offset, r.rows, r.columns, r.bits, r.width, 0, 0) for r in records)
    tail = struct.pack("<QQII", len(onnx_bytes), len(skeleton_bytes), len(records), len(extras))
    body = (hashlib.sha256(onnx_bytes).digest() + tail + table + skeleton_bytes + b"".join(extras)
            + b"".join(payloads))
    version = VERSION_GRAPHS if extras else VERSION
    return MAGIC + struct.pack("<I", version) + hashlib.sha256(body).digest() + body


def read_graphs(container: bytes) -> tuple[list[TensorRecord], list[Graph], int]:
    """(tensor records, graphs — the first one named "" —, offset of the first payload) after checking
    magic, version, the container's own sha256 and that its lengths add up."""
    if len(container) < HEADER.size or container[:4] != MAGIC:
        raise ContainerError("not a .ccw container (bad magic)")
    magic, version, body_sha, onnx_sha, onnx_length, skeleton_length, count, extra = HEADER.unpack_from(container)
    if version not in (VERSION, VERSION_GRAPHS) or (version == VERSION) != (extra == 0):
        raise ContainerError(f".ccw version {version}; this decoder reads versions {VERSION} and {VERSION_GRAPHS}")
    if hashlib.sha256(memoryview(container)[40:]).digest() != body_sha:
        raise ContainerError(".ccw container is corrupt: its sha256 does not match its header")
    records = [TensorRecord(*RECORD.unpack_from(container, HEADER.size + i * RECORD.size)[:5]) for i in range(count)]
    at = HEADER.size + count * RECORD.size
    graphs = [Graph("", onnx_sha, onnx_length, skeleton_length, tuple(r.onnx_offset for r in records), at)]
    at += skeleton_length
    for _ in range(extra):
        if at + GRAPH.size + 8 * count > len(container):
            raise ContainerError("container lengths are inconsistent")
        raw, sha, length, skeleton = GRAPH.unpack_from(container, at)
        offsets = struct.unpack_from(f"<{count}Q", container, at + GRAPH.size)
        at += GRAPH.size + 8 * count
        graphs.append(Graph(raw.rstrip(b"\0").decode("ascii", "replace"), sha, length, skeleton, offsets, at))
        at += skeleton
    coded = sum(r.length for r in records)
    if (any(g.skeleton_length + coded != g.onnx_length for g in graphs)
            or at + sum(r.palette_bytes + r.index_bytes for r in records) != len(container)):
        raise ContainerError("container lengths are inconsistent")
    return records, graphs, at


def read_header(container: bytes) -> tuple[bytes, int, int, list[TensorRecord]]:
    """(decoded sha256, onnx_length, skeleton_length, records) of the first graph, after the checks of
    ``read_graphs``."""
    records, graphs, _ = read_graphs(container)
    return graphs[0].sha256, graphs[0].onnx_length, graphs[0].skeleton_length, records


def graph_names(container: bytes) -> list[str]:
    """The names of a container's extra graphs (the first graph is ``decode(container)``)."""
    return [g.name for g in read_graphs(container)[1][1:]]


def decode(container: bytes, graph: str = "") -> bytes:
    """The exact ONNX bytes of the container's first graph, or of its extra graph ``graph`` (ContainerError if
    it is corrupt or has no such graph)."""
    records, graphs, data_at = read_graphs(container)
    chosen = next((g for g in graphs if g.name == graph), None)
    if chosen is None:
        raise ContainerError(f"the container has no graph {graph!r}; it has {[g.name or '(first)' for g in graphs]}")
    view = memoryview(container)
    out = np.empty(chosen.onnx_length, np.uint8)
    cursor = skel = 0
    for record, offset in zip(records, chosen.offsets):
        gap = offset - cursor
        if gap < 0 or offset + record.length > chosen.onnx_length:
            raise ContainerError("tensor table out of order or out of range")
        out[cursor:offset] = np.frombuffer(view, np.uint8, gap, chosen.skeleton_at + skel)
        skel += gap
        palettes = np.frombuffer(view, np.int8, record.palette_bytes, data_at).reshape(record.rows, 1 << record.bits)
        data_at += record.palette_bytes
        indices = unpack_indices(view[data_at:data_at + record.index_bytes], record.length, record.width)
        data_at += record.index_bytes
        q = np.take_along_axis(palettes, indices.reshape(record.rows, record.columns).astype(np.intp), axis=1)
        out[offset:offset + record.length] = q.reshape(-1).view(np.uint8)
        cursor = offset + record.length
    rest = chosen.onnx_length - cursor
    if skel + rest != chosen.skeleton_length:
        raise ContainerError("container lengths are inconsistent")
    out[cursor:] = np.frombuffer(view, np.uint8, rest, chosen.skeleton_at + skel)
    decoded = out.tobytes()
    if hashlib.sha256(decoded).digest() != chosen.sha256:
        raise ContainerError("decoded ONNX does not match the sha256 recorded in the container")
    return decoded


def with_graphs(container: bytes, graphs: Mapping[str, bytes]) -> bytes:
    """The container with ``graphs`` added beside its first graph (same coded tensors, bits and widths)."""
    records, _, _ = read_graphs(container)
    first = decode(container)
    names = {offset: name for name, (offset, _) in initializer_payloads(first).items()}
    tensors = {names[r.onnx_offset]: (r.bits, r.width, r.columns) for r in records}
    return encode(first, tensors, graphs)


def summary(container: bytes) -> dict:
    """Sizes of the parts (skeleton, palettes, indices) and the coded weights' bits, for reports."""
    records, graphs, _ = read_graphs(container)
    onnx_length, skeleton_length = graphs[0].onnx_length, graphs[0].skeleton_length
    bits: dict[int, int] = {}
    for r in records:
        bits[r.bits] = bits.get(r.bits, 0) + r.length
    return {"bytes": len(container), "onnx_bytes": onnx_length, "skeleton_bytes": skeleton_length,
            "palette_bytes": sum(r.palette_bytes for r in records), "index_bytes": sum(r.index_bytes for r in records),
            "tensors": len(records), "coded_weights": sum(r.length for r in records),
            "graphs": {g.name: {"onnx_bytes": g.onnx_length, "skeleton_bytes": g.skeleton_length} for g in graphs[1:]},
            "weights_by_bits": {str(k): v for k, v in sorted(bits.items())}}
