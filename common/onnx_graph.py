"""Graph hygiene for browser backends, metadata, deterministic saving."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from common.files import atomic_write_bytes

METADATA_KEY = "clearcut"


def explicit_conv_attributes(model: onnx.ModelProto) -> int:
    """Write kernel_shape, strides, pads, dilations and group on every Conv (onnxruntime-web's WebGPU
    backend fails on defaults). Returns the number of attributes added."""
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    added = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        present = {a.name for a in node.attribute}
        dims = weights.get(node.input[1])
        spatial = len(dims) - 2 if dims else 2
        defaults = {"strides": [1] * spatial, "pads": [0] * (2 * spatial), "dilations": [1] * spatial, "group": 1}
        if dims:
            defaults["kernel_shape"] = dims[2:]
        for name, value in defaults.items():
            if name not in present:
                node.attribute.append(helper.make_attribute(name, value))
                added += 1
        if "kernel_shape" not in {a.name for a in node.attribute}:
            raise ValueError(f"Conv {node.name}: weight {node.input[1]} is not an initializer; kernel_shape unknown")
    return added


def drop_redundant_ceil_mode(model: onnx.ModelProto) -> int:
    """Set ceil_mode=0 on MaxPools whose input sizes divide evenly (the result is identical), because some
    onnxruntime-web WebGPU builds reject ceil_mode=1. Needs static shapes; returns pools changed."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    changed = 0
    for node in model.graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not attrs.get("ceil_mode"):
            continue
        kernel, strides = attrs.get("kernel_shape"), attrs.get("strides", [1] * len(attrs.get("kernel_shape", [])))
        spatial = (shapes.get(node.input[0]) or [None])[2:]
        if (not spatial or None in spatial or any(attrs.get("pads", [0]))
                or list(kernel) != list(strides) or any(s % k for s, k in zip(spatial, kernel))):
            continue
        for attr in node.attribute:
            if attr.name == "ceil_mode":
                attr.i = 0
        changed += 1
    return changed


def set_metadata(model: onnx.ModelProto, metadata: dict) -> None:
    """Store the registry's description (preprocessing, output, licence) in ``metadata_props``."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True)))


def load_graph(path_or_model: Path | onnx.ModelProto) -> onnx.ModelProto:
    """The model itself, or the file read (a single-file graph: no external data)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    return onnx.load(str(path_or_model), load_external_data=False)


def get_metadata(path_or_model: Path | onnx.ModelProto) -> dict:
    model = load_graph(path_or_model)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise KeyError(f"no {METADATA_KEY!r} metadata in the model")


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, written atomically. Fails above protobuf's 2 GB limit rather than
    silently writing external data."""
    atomic_write_bytes(Path(path), model.SerializeToString(deterministic=True))


def runtime_session_config(path_or_model: Path | onnx.ModelProto) -> dict[str, str]:
    """onnxruntime session config entries a graph needs to run at full speed, in onnxruntime (CPU) and in
    onnxruntime-web alike (the bundle manifest carries them to the browser).

    A weight-only quantized graph (DequantizeLinear on initializers, no QuantizeLinear) is slow by default:
    onnxruntime's constant folding leaves DequantizeLinear alone to keep QDQ groups for its int8 kernels, so
    every weight is dequantized on every run and Conv cannot pre-pack it (in Chromium's WASM: 9.3 s instead
    of fp32's 5.3 s per 1024² IS-Net run). With `session.disable_quant_qdq` the weights fold into fp32
    initializers at load time. Graphs with activation quantization need the QDQ groups: nothing is set."""
    model = load_graph(path_or_model)
    ops = {node.op_type for node in model.graph.node}
    if "DequantizeLinear" in ops and "QuantizeLinear" not in ops and "DynamicQuantizeLinear" not in ops:
        return {"session.disable_quant_qdq": "1"}
    return {}


def has_quantized_activations(path_or_model: Path | onnx.ModelProto) -> bool:
    """Whether a graph quantizes computed tensors (a QuantizeLinear of something other than an initializer): an
    int8 QDQ graph, whose QuantizeLinear nodes onnxruntime-web's WebGPU engine would run on the CPU."""
    model = load_graph(path_or_model)
    constants = {i.name for i in model.graph.initializer}
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") and n.input[0] not in constants
               for n in model.graph.node)


def webgpu_features(path_or_model: Path | onnx.ModelProto) -> list[str]:
    """WebGPU device features a graph needs: `shader-f16` when it computes in fp16 (a Cast to float16 of a
    computed tensor, as the fp16 variant does after its fp32 input). Weights stored in fp16 and cast up to
    fp32 (int8w's kept layers) do not need it: the casts of initializers fold at load time."""
    model = load_graph(path_or_model)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == onnx.TensorProto.FLOAT16 and node.input[0] not in constants:
            return ["shader-f16"]
    return []


# WebGPU's default maxStorageBuffersPerShaderStage is 8: one binding per input plus the output.
WEBGPU_MAX_INPUTS = 7
CONV_ATTRIBUTES = {"kernel_shape", "strides", "pads", "dilations", "group"}


def webgpu_problems(path_or_model: Path | onnx.ModelProto) -> list[str]:
    """Why onnxruntime-web's WebGPU backend would fail on this graph (empty: none found): tensors without a
    static shape, Concat inputs or Split outputs beyond the per-shader buffer limit, Conv nodes relying on
    attribute defaults."""
    model = load_graph(path_or_model)
    inferred = shape_inference.infer_shapes(model)
    dynamic = [value.name for value in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
               if not value.type.tensor_type.HasField("shape")
               or any(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)]
    problems = [f"{len(dynamic)} tensor(s) without a static shape, e.g. {dynamic[0]}"] if dynamic else []
    for node in model.graph.node:
        fan = len(node.input) if node.op_type == "Concat" else len(node.output) if node.op_type == "Split" else 0
        if fan > WEBGPU_MAX_INPUTS:
            problems.append(f"{node.op_type} {node.name} has {fan} tensors (WebGPU allows {WEBGPU_MAX_INPUTS})")
        if node.op_type == "Conv" and not CONV_ATTRIBUTES <= {a.name for a in node.attribute}:
            problems.append(f"Conv {node.name} relies on attribute defaults")
    return problems
