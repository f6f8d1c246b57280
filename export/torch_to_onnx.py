"""Export a registry model to a single-output ONNX graph: the foreground alpha, 1x1xHxW in [0, 1]."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.onnx_graph import (drop_redundant_ceil_mode, explicit_conv_attributes, runtime_session_config, save_model,
                               set_metadata)
from models.registry import ModelConfig

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "alpha"


class AlphaOutput(nn.Module):
    """Wrap a model so that it returns only the alpha map the registry selects (no unused side outputs)."""

    def __init__(self, model: nn.Module, config: ModelConfig):
        super().__init__()
        self.model = model
        self.select = config.output.select
        self.sigmoid = not config.output.sigmoid_in_model
        self.minmax = config.output.minmax_normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for index in self.select:
            out = out[index]
        if self.sigmoid:
            out = torch.sigmoid(out)
        if self.minmax:
            low, high = out.amin(dim=(2, 3), keepdim=True), out.amax(dim=(2, 3), keepdim=True)
            out = (out - low) / (high - low + 1e-8)
        return out


def reference_alpha(model: nn.Module, config: ModelConfig, x: np.ndarray) -> np.ndarray:
    """The torch fp32 reference output for one preprocessed input (1x3xHxW) → 1x1xHxW."""
    wrapper = AlphaOutput(model, config).eval()
    with torch.inference_mode():
        return wrapper(torch.from_numpy(x)).numpy()


def export_onnx(model: nn.Module, config: ModelConfig, path: Path, input_size: tuple[int, int] | None = None) -> Path:
    """torch.onnx.export (TorchScript exporter, opset 17, static shape), then onnxsim, explicit Conv
    attributes, redundant ceil_mode removed, registry metadata; written atomically as one file."""
    from onnxsim import simplify

    height, width = input_size or config.preprocessing.input_size
    wrapper = AlphaOutput(model, config).eval()
    dummy = torch.zeros(1, 3, height, width)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    exported = onnx.load_from_string(buffer.getvalue())
    simplified, ok = simplify(exported)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {config.name}")
    explicit_conv_attributes(simplified)
    drop_redundant_ceil_mode(simplified)
    simplified.producer_name = "clearcut"
    simplified.doc_string = f"{config.name}: foreground alpha; preprocessing in metadata_props['clearcut']"
    metadata = config.metadata()
    metadata["preprocessing"]["input_size"] = [height, width]
    set_metadata(simplified, metadata)
    onnx.checker.check_model(simplified, full_check=True)
    save_model(simplified, path)
    return path


def cpu_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in runtime_session_config(path).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
