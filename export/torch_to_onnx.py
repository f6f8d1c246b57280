"""Export a registry model to a single-output ONNX graph: the foreground alpha, 1x1xHxW in [0, 1]."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from common.contract import INPUT_NAME, OUTPUT_NAME
from common.onnx_graph import drop_redundant_ceil_mode, explicit_conv_attributes, save_model, set_metadata
from models.registry import ModelConfig

OPSET = 17


class AlphaOutput(nn.Module):
    """Wrap a model so that it returns only the alpha map the registry selects (no unused side outputs)."""

    def __init__(self, model: nn.Module, config: ModelConfig):
        super().__init__()
        self.model = model
        self.select = config.output.select
        self.sigmoid = not config.output.sigmoid_in_model
        self.minmax = config.output.minmax_normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.postprocess(self.model(x))

    def postprocess(self, out) -> torch.Tensor:
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
    height, width = input_size or config.preprocessing.input_size
    wrapper = AlphaOutput(model, config).eval()
    _export_graph(wrapper, (torch.zeros(1, 3, height, width),), [INPUT_NAME], [OUTPUT_NAME], config, path,
                  (height, width), f"{config.name}: foreground alpha; preprocessing in metadata_props['clearcut']")
    return path


def _export_graph(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                  config: ModelConfig, path: Path, size: tuple[int, int], doc: str, extra_metadata=None) -> None:
    from onnxsim import simplify

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=input_names, output_names=output_names)
    exported = onnx.load_from_string(buffer.getvalue())
    del buffer
    simplified, ok = simplify(exported)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {config.name}")
    del exported
    explicit_conv_attributes(simplified)
    drop_redundant_ceil_mode(simplified)
    simplified.producer_name = "clearcut"
    simplified.doc_string = doc
    metadata = config.metadata()
    metadata["preprocessing"]["input_size"] = list(size)
    metadata.update(extra_metadata or {})
    set_metadata(simplified, metadata)
    onnx.checker.check_model(simplified, full_check=True)
    save_model(simplified, path)


class _StageOutput(nn.Module):
    """A browser stage as a graph: the last stage returns the alpha map as the whole graph does."""

    def __init__(self, module: nn.Module, alpha: AlphaOutput | None):
        super().__init__()
        self.module, self.alpha = module, alpha

    def forward(self, *inputs: torch.Tensor):
        out = self.module(*inputs)
        return self.alpha.postprocess(out) if self.alpha is not None else out


Stage = tuple[str, nn.Module, tuple[str, ...], tuple[str, ...]]


def model_stages(model: nn.Module, config: ModelConfig) -> list[Stage]:
    """The registry's ``browser_stages`` of ``model``: (name, module, inputs, outputs) in run order, the last
    one ending in the alpha map. The first stage reads ``input``; every other input is an earlier output."""
    stages = {name: (name, module, ins, outs) for name, module, ins, outs in model.browser_stages()}
    unknown = [s for s in config.browser_stages if s not in stages]
    if unknown or not config.browser_stages:
        raise ValueError(f"{config.name}: browser stages {list(config.browser_stages)}; the model has {list(stages)}")
    chosen = [stages[s] for s in config.browser_stages]
    alpha = AlphaOutput(model, config).eval()
    return [(name, _StageOutput(module, alpha if i == len(chosen) - 1 else None).eval(), ins, outs)
            for i, (name, module, ins, outs) in enumerate(chosen)]


def export_stages(model: nn.Module, config: ModelConfig, paths: dict[str, Path],
                  input_size: tuple[int, int] | None = None) -> list[dict]:
    """Export each browser stage of ``model`` as its own graph (same weights, same hygiene as
    ``export_onnx``); the stages' example inputs come from running the earlier stages on zeros. Returns the
    stage list the manifests carry: name, inputs and outputs (names, shapes)."""
    height, width = input_size or config.preprocessing.input_size
    values = {INPUT_NAME: torch.zeros(1, 3, height, width)}
    described = []
    for name, module, inputs, outputs in model_stages(model, config):
        args = tuple(values[i] for i in inputs)
        _export_graph(module, args, list(inputs), list(outputs), config, paths[name], (height, width),
                      f"{config.name}: browser stage {name!r} ({', '.join(inputs)} → {', '.join(outputs)})",
                      {"stage": name, "stage_inputs": list(inputs), "stage_outputs": list(outputs)})
        with torch.inference_mode():
            result = module(*args)
        result = result if isinstance(result, (tuple, list)) else (result,)
        values.update(zip(outputs, result))
        described.append({"name": name, "inputs": list(inputs), "outputs": list(outputs),
                          "shapes": {k: list(values[k].shape) for k in (*inputs, *outputs)}})
    return described
