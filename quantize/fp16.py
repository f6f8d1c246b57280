"""fp16 weights and compute, fp32 inputs and outputs (onnxconverter-common)."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from export.onnx_graph import save_model


def to_fp16(source: Path, target: Path) -> Path:
    model = onnx.load(str(source))
    # keep_io_types: callers keep passing fp32 tensors; the cast happens inside the graph.
    with warnings.catch_warnings():  # it warns once per weight it clamps into fp16's range
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.checker.check_model(converted)
    save_model(converted, target)
    return target
