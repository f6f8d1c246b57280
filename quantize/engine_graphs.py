"""Engine graphs: the graph another inference engine runs best, made from a shipped variant's graph with the
same weight values.

onnxruntime-web's WebGPU engine has no QuantizeLinear kernel: an int8 QDQ graph (static int8 activations) runs
there with every QuantizeLinear on the CPU and each quantized activation copied GPU → CPU → GPU. Its WebGPU
graph keeps the int8 weights and their DequantizeLinear nodes (byte for byte the same initializers, so a coded
container can carry both graphs on one set of coded weights) and drops the activations' QuantizeLinear →
DequantizeLinear pairs: float activations, every node one the GPU runs (DequantizeLinear of the int8 weights
included); the CPU and WASM engines fold those into float weights at load (``session.disable_quant_qdq``), which
the native gate does, with the same numbers.

onnxruntime's QDQ quantizer drops a Relu that precedes a QuantizeLinear whose range starts at 0 (its zero point
is the type's lowest value, so the rounding clamps negatives to 0 anyway): U²-Net's and IS-Net's conv blocks
have no Relu left in the int8 graph. Where such a pair goes, a Relu comes back (and where the activation was
non-negative anyway it changes nothing); the upper end of the int8 range, a calibration artefact, is not kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from common.files import atomic_write_bytes

# Session settings per engine graph. WebGPU: none. Folding the weights' DequantizeLinear at load
# (session.disable_quant_qdq, which the CPU and WASM engines want for speed) would keep an fp32 copy of every
# weight in the WASM heap beside the GPU's: measured on IS-Net's WebGPU graph in Chromium, a 282 MB heap folded
# against 113 MB not (the WASM engine's int8 session: 136 MB). Unfolded, the GPU dequantizes the int8 weights
# each run; every node still runs on the GPU (eval/webgpu_placement.py checks with this setting).
ENGINE_SESSION_CONFIG: dict[str, dict[str, str]] = {"webgpu": {}}

_LOWEST = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128, onnx.TensorProto.UINT16: 0,
           onnx.TensorProto.INT16: -32768}


def _clamps_at_zero(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    """Whether a QuantizeLinear's range starts at 0: its zero point is the lowest value of its type."""
    if len(node.input) < 3 or node.input[2] not in initializers:
        return True  # no zero point: uint8 with zero point 0
    zero_point = initializers[node.input[2]]
    lowest = _LOWEST.get(zero_point.data_type)
    return lowest is not None and bool(np.all(numpy_helper.to_array(zero_point) == lowest))



def float_activation_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the int8 QDQ ``model`` without its activations' QuantizeLinear → DequantizeLinear pairs; weights,
    biases and their DequantizeLinear nodes are kept (same initializers, same order); initializers only the
    removed nodes read (activation scales and zero points) are dropped. ValueError when a QuantizeLinear of an
    activation feeds anything but DequantizeLinear nodes (nothing to rewire it to)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    constants = set(initializers)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    replace: dict[str, str] = {}  # an activation DequantizeLinear's output → the float tensor it stood for
    removed: set[int] = set()
    relus: dict[int, onnx.NodeProto] = {}  # a removed QuantizeLinear → the Relu that takes its place
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        readers = consumers.get(node.output[0], [])
        if node.output[0] in graph_outputs or any(r.op_type != "DequantizeLinear" for r in readers):
            raise ValueError(f"QuantizeLinear {node.name!r} feeds {sorted({r.op_type for r in readers})}: "
                             "only activation QuantizeLinear → DequantizeLinear pairs can be removed")
        removed.add(id(node))
        value = node.input[0]
        if _clamps_at_zero(node, initializers):
            value = f"{node.output[0]}_relu"
            relus[id(node)] = helper.make_node("Relu", [node.input[0]], [value], name=f"{node.name}_relu")
        for reader in readers:
            removed.add(id(reader))
            replace[reader.output[0]] = value

    def source(name: str) -> str:
        while name in replace:
            name = replace[name]
        return name

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    kept = [relus[id(n)] if id(n) in relus else n for n in graph.node if id(n) not in removed or id(n) in relus]
    for node in kept:
        copy = out.graph.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = source(name)
    for output in out.graph.output:
        if output.name in replace:
            raise ValueError(f"graph output {output.name!r} is a dequantized activation")
    used = {name for n in out.graph.node for name in n.input} | graph_outputs
    initializers = [i for i in graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    values = [v for v in graph.value_info if v.name not in replace]
    del out.graph.value_info[:]
    out.graph.value_info.extend(values)
    onnx.checker.check_model(out)
    return out


def to_float_activations(source: Path, target: Path) -> None:
    """``float_activation_model`` from file to file (written atomically)."""
    model = float_activation_model(onnx.load(str(source)))
    atomic_write_bytes(Path(target), model.SerializeToString())
