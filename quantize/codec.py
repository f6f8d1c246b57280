"""Weights coded below 8 bits: an int8 QDQ graph whose Conv weights use per-row palettes of 2**b levels on
the int8 grid (b per layer), stored as a ``.ccw`` container (quantize/ccw.py) that rebuilds the exact ONNX.

The graph computes exactly as the static int8 variant does (same QDQ nodes, activation ranges and per-channel
weight scales; int8 kernels); only the int8 weight values change, plus each coded Conv's int32 bias, which
absorbs the mean output shift of its weight error (bias correction). Per layer:

    T = W_fp32 / scale                      the fp32 weights on the int8 grid (per-row scales of the int8 graph)
    palettes + error-compensating rounding  quantize/palette.py, with H = E[x xᵀ] of the Conv's input patches
    bias += round(−(Q·s − W) E[x] / bias_scale)

Widths: ``allocate`` picks b per layer from the measured output error of each width and each layer's rate,
for a budget in average bits per Conv weight (the layers it keeps at 8 count 8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from quantize import ccw
from quantize.codec_stats import ConvSpec, InputMoments, conv_specs
from quantize.palette import palette_rounding, prepare_hessian

WIDTHS = (2, 3, 4, 5, 6, 8)  # 8: the int8 weights as they are (not coded)
# H's diagonal is raised by a fraction of its mean before inversion: DAMP × columns / patches, within
# [DAMP_MIN, DAMP_MAX]. Few patches per column (wide layers on 16² and 32² maps) make H overfit the calibration
# photos; measured on IS-Net (fit on 16 photos, error on 30 others), the best fraction grows like that ratio.
DAMP = 0.5
DAMP_MIN, DAMP_MAX = 0.003, 1.0
REFITS = 2
LARGE_LAYER = 1 << 19  # weights; larger layers are coded at 2, 3, 4 (and 8) bits only


def storage_width(bits: int, layout: str) -> int:
    """Bits per stored index: ``packed`` = b; ``aligned`` = the next of 1, 2, 4, 8 (indices never straddle a
    byte, so a byte-oriented entropy coder such as the CDN's brotli sees whole symbols)."""
    if layout == "packed":
        return bits
    return next(w for w in ccw.ALIGNED_WIDTHS if w >= bits)


@dataclass(frozen=True)
class QdqConv:
    """A Conv of the int8 QDQ graph: its int8 weight, per-row scales and int32 bias initializers."""

    node: str
    weight: str  # INT8 initializer (rows × Cin × kh × kw)
    scale: str
    bias: str | None  # INT32 initializer
    bias_scale: str | None


def qdq_convs(model: onnx.ModelProto) -> dict[str, QdqConv]:
    """Node name → the Conv's quantized initializers, for Convs whose weight is DequantizeLinear(int8 init)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or kinds.get(dq.input[0]) != onnx.TensorProto.INT8:
            continue
        bias = producer.get(node.input[2]) if len(node.input) > 2 else None
        coded_bias = bias is not None and bias.op_type == "DequantizeLinear" and kinds.get(bias.input[0]) == onnx.TensorProto.INT32
        found[node.name] = QdqConv(node.name, dq.input[0], dq.input[1], bias.input[0] if coded_bias else None,
                                   bias.input[1] if coded_bias else None)
    return found


@dataclass
class Layer:
    """One codable Conv: fp32 weights (rows × columns), its int8 graph's names and scales."""

    spec: ConvSpec
    qdq: QdqConv
    w: np.ndarray
    scale: np.ndarray

    @property
    def size(self) -> int:
        return self.w.size

    @property
    def target(self) -> np.ndarray:
        return self.w / self.scale[:, None]


def layers_of(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> list[Layer]:
    """The fp32 graph's Convs that the int8 graph quantizes per row (matched by node name), in graph order."""
    qdq = qdq_convs(int8)
    arrays = {i.name: i for i in fp32.graph.initializer}
    scales = {i.name: i for i in int8.graph.initializer}
    layers = []
    for spec in conv_specs(fp32):
        if spec.node not in qdq:
            continue
        conv = qdq[spec.node]
        scale = numpy_helper.to_array(scales[conv.scale]).astype(np.float64)
        if scale.shape != (spec.shape[0],):
            continue  # per-tensor scale: leave it
        w = numpy_helper.to_array(arrays[spec.weight]).astype(np.float64).reshape(spec.shape[0], -1)
        layers.append(Layer(spec, conv, w, scale))
    return layers


@dataclass
class Coded:
    """One layer coded at ``bits``: its int8 values, the bias change (int32 units) and the output errors."""

    bits: int
    q: np.ndarray
    bias_delta: np.ndarray | None
    error: float  # E‖ΔW x + Δb‖² / E‖W x‖² on the calibration patches (relative output error)


def code_layer(layer: Layer, moments: InputMoments, widths: Sequence[int], int8_q: np.ndarray,
               bias_scale: np.ndarray | None, damp: float = DAMP, refits: int = REFITS) -> dict[int, Coded]:
    """``layer`` on palettes of 2**b levels for each b of ``widths``, with error-compensating rounding and bias
    correction; 8 is the int8 graph's own weights (``int8_q``) with the same bias correction."""
    h = np.asarray(moments.second_moment, np.float64)
    mean = moments.mean
    target, w, s = layer.target, layer.w, layer.scale
    rounded = {8: int8_q.astype(np.int8)} if 8 in widths else {}
    low = [b for b in widths if b < 8]
    if low:
        order, upper = prepare_hessian(h, damping(damp, w.shape[1], moments.n))
        rounded.update(palette_rounding(target, np.diag(h).copy(), low, order, upper, refits))
    # E‖ΔW x‖² of every width and E‖W x‖² in one float32 product (the K² products are the costly part)
    deltas = [(rounded[b].astype(np.float64) * s[:, None]) - w for b in sorted(rounded)]
    stacked = np.concatenate([*deltas, w]).astype(np.float32)
    # (row sums in float64: numpy's float32 einsum sums in an order that follows its SIMD target)
    energy = np.multiply(stacked @ h.astype(np.float32), stacked).sum(axis=1, dtype=np.float64).reshape(-1, w.shape[0])
    base = max(float(energy[-1].sum()), 1e-30)
    result = {}
    for i, bits in enumerate(sorted(rounded)):
        shift = deltas[i] @ mean  # bias correction removes the mean part of the output error
        error = max(float(energy[i].sum()) - float(shift @ shift), 0.0) / base
        bias_delta = np.rint(-shift / bias_scale).astype(np.int64) if bias_scale is not None else None
        result[bits] = Coded(bits, rounded[bits], bias_delta, error)
    return result


def damping(damp: float, columns: int, patches: int) -> float:
    return min(max(damp * columns / max(patches, 1), DAMP_MIN), DAMP_MAX)


def widths_for(size: int) -> tuple[int, ...]:
    """The widths a layer is coded at: large layers are never worth 5 or 6 bits (and cost the most to code)."""
    return WIDTHS if size < LARGE_LAYER else tuple(b for b in WIDTHS if b <= 4 or b == 8)


# ---------------------------------------------------------------- bit allocation

@dataclass
class Allocation:
    bits: dict[str, int]  # node name → width (8: uncoded)
    average_bits: float  # per Conv weight, 8 for the uncoded


def allocate(sizes: Mapping[str, int], errors: Mapping[str, Mapping[int, float]], budget: float,
             rate: Callable[[str, int], float] | None = None, sensitivity: Mapping[str, float] | None = None,
             fixed: Mapping[str, int] | None = None) -> Allocation:
    """Per layer a width from ``errors[layer]`` (width → relative output error; 8 must be present) that
    minimises Σ sensitivity·error subject to Σ size·rate ≤ budget·Σ size, by a Lagrange multiplier search.
    ``rate(layer, bits)``: bits per weight (default: bits). ``fixed``: layers whose width is given."""
    fixed = dict(fixed or {})
    rate = rate or (lambda _, b: float(b))
    weight = {n: (sensitivity or {}).get(n, 1.0) for n in sizes}
    total = sum(sizes.values())
    options = {n: sorted(errors[n]) if n not in fixed else [fixed[n]] for n in sizes}

    def choose(lam: float) -> dict[str, int]:
        # ties: the narrowest width (options ascending; min keeps the first); layers in the order given
        return {n: min(options[n], key=lambda b: (weight[n] * errors[n].get(b, 0.0) + lam * sizes[n] * rate(n, b), b))
                for n in sizes}

    def spent(choice: dict[str, int]) -> float:
        return sum(sizes[n] * rate(n, b) for n, b in choice.items()) / total

    least = spent({n: min(options[n], key=lambda b: rate(n, b)) for n in sizes})
    if least > budget:
        raise ValueError(f"a budget of {budget} bits per weight is below the least this plan can spend, {least:.3f}")
    lo, hi = 0.0, 1.0
    while spent(choose(hi)) > budget:
        hi *= 4
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e12
        if spent(choose(mid)) > budget:
            lo = mid
        else:
            hi = mid
        if lo > 0 and hi / lo < 1 + 1e-9:
            break
    choice = choose(hi)
    return Allocation(choice, sum(sizes[n] * b for n, b in choice.items()) / total)


# ---------------------------------------------------------------- the coded graph and its container

def apply(int8: onnx.ModelProto, layers: Sequence[Layer], coded: Mapping[str, Coded]) -> onnx.ModelProto:
    """A copy of the int8 graph with the coded layers' int8 weights and int32 biases replaced."""
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    initializers = {i.name: i for i in model.graph.initializer}
    for layer in layers:
        c = coded.get(layer.spec.node)
        if c is None:
            continue
        tensor = initializers[layer.qdq.weight]
        tensor.CopyFrom(numpy_helper.from_array(c.q.reshape(layer.spec.shape).astype(np.int8), tensor.name))
        if c.bias_delta is not None and layer.qdq.bias:
            bias = initializers[layer.qdq.bias]
            values = numpy_helper.to_array(bias).astype(np.int64) + c.bias_delta
            info = np.iinfo(np.int32)
            bias.CopyFrom(numpy_helper.from_array(np.clip(values, info.min, info.max).astype(np.int32), bias.name))
    return model


def container_tensors(layers: Sequence[Layer], bits: Mapping[str, int], layout: str) -> dict[str, tuple[int, int, int]]:
    """``ccw.encode``'s tensor table: int8 initializer → (bits, width, columns) of every coded layer."""
    return {layer.qdq.weight: (bits[layer.spec.node], storage_width(bits[layer.spec.node], layout),
                               layer.spec.columns)
            for layer in layers if bits.get(layer.spec.node, 8) < 8}

