"""Weight-only int8: Conv/MatMul/Gemm weights stored as int8 with one scale per output channel and
dequantized inside the graph (DequantizeLinear), compute stays fp32. About a quarter of the fp32 download
with near-fp32 quality."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from common.onnx_graph import save_model

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
MIN_ELEMENTS = 256  # tiny tensors are not worth a DequantizeLinear


def quantize_per_channel(weight: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127]; returns (int8 weights, fp32 scales along ``axis``)."""
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def to_int8_weights(source: Path, target: Path, keep_fp16: Sequence[str] = ()) -> Path:
    """``keep_fp16``: substrings of node names whose weights are stored as fp16 instead (the registry lists the
    layers that int8 hurts most, e.g. the first full-resolution stages)."""
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    new_nodes = []
    done: set[str] = set()
    for node in graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        name = node.input[index] if index is not None and len(node.input) > index else None
        if name and name in initializers and name not in done:
            weight = numpy_helper.to_array(initializers[name])
            # MatMul/Gemm weights are (in, out): channels are the last axis; Conv is (out, in, k, k).
            axis = 0 if node.op_type in ("Conv", "ConvTranspose") else weight.ndim - 1
            keep = any(pattern in node.name for pattern in keep_fp16)
            if weight.dtype == np.float32 and keep:
                graph.initializer.remove(initializers[name])
                graph.initializer.append(numpy_helper.from_array(weight.astype(np.float16), name + "_fp16"))
                new_nodes.append(helper.make_node("Cast", [name + "_fp16"], [name], name=name + "_to_fp32",
                                                  to=onnx.TensorProto.FLOAT))
                done.add(name)
            elif weight.dtype == np.float32 and weight.size >= MIN_ELEMENTS and weight.ndim >= 2:
                q, scale = quantize_per_channel(weight, axis)
                graph.initializer.remove(initializers[name])
                graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                          numpy_helper.from_array(scale, name + "_scale"),
                                          numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero")])
                new_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"],
                                                  [name], name=name + "_dequantize", axis=axis))
                done.add(name)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    save_model(model, target)
    return target
