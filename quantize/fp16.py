"""fp16 weights and compute, fp32 inputs and outputs (onnxconverter-common)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import onnx
from onnxconverter_common import float16

from common.onnx_graph import save_model


def to_fp16(source: Path, target: Path, keep_fp32_ops: Sequence[str] = ()) -> Path:
    """``keep_fp32_ops``: op types computed in fp32 (Casts around them), on top of the converter's defaults."""
    model = onnx.load(str(source))
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + [op for op in keep_fp32_ops if op not in float16.DEFAULT_OP_BLOCK_LIST]
    _unshare_initializers(model, set(block))
    # keep_io_types: callers keep passing fp32 tensors; the cast happens inside the graph.
    with warnings.catch_warnings():  # it warns once per weight it clamps into fp16's range
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                                     op_block_list=block)
    onnx.checker.check_model(converted)
    save_model(converted, target)
    return target


def _unshare_initializers(model: onnx.ModelProto, fp32_ops: set[str]) -> int:
    """Give fp32-kept nodes their own copy of an initializer they share with converted nodes. Exporters merge
    equal constants (e.g. a LayerNorm's zero bias and a folded BatchNorm's); the converter then leaves the
    shared tensor in fp32 and the fp16 node fails to load. Returns the number of copies."""
    initializers = {i.name: i for i in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in initializers:
                users.setdefault(name, []).append(node)
    copies = 0
    for name, nodes in users.items():
        kept = [n for n in nodes if n.op_type in fp32_ops]
        if not kept or len(kept) == len(nodes):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[name])
        copy.name = f"{name}_fp32"
        model.graph.initializer.append(copy)
        for node in kept:
            node.input[:] = [copy.name if i == name else i for i in node.input]
        copies += 1
    return copies
