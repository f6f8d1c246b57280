"""Load weights into our torch models: upstream state dicts (.pth, safetensors) and upstream ONNX graphs.

All routes end in ``load_state_dict(strict=True)``; a file that does not fit the architecture fails with
the missing / unexpected keys or the mismatching shapes named.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.architectures import build_model
from models.errors import CheckpointError
from models.registry import ModelConfig

STRIP_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel (``module.``) and torch.compile (``_orig_mod.``) prefixes."""
    cleaned = OrderedDict()
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` / ``.pt`` (tensors only, no pickled code) or ``.safetensors`` state dict."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return strip_prefixes(state)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error that says what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        def some(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = [f"{len(missing)} missing: {some(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {some(unexpected)}" if unexpected else "",
                 f"{len(wrong_shape)} with other shapes: {some(wrong_shape)}" if wrong_shape else ""]
        raise CheckpointError(f"{origin} does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------- ONNX import

def _initializer_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs, with Cast (fp16 → fp32) and Identity resolved to fp32 arrays."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    changed = True
    while changed:  # the graph may be out of topological order, so resolve until nothing changes
        changed = False
        for node in graph.node:
            if node.op_type in ("Cast", "Identity") and node.input[0] in values and node.output[0] not in values:
                values[node.output[0]] = values[node.input[0]].astype(np.float32)
                changed = True
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in values.items()}


def _module_path(node_name: str) -> str | None:
    """``/stage1/rebnconvin/conv_s1/Conv`` → ``stage1.rebnconvin.conv_s1`` (torch exporter naming)."""
    if not node_name.startswith("/") or "/" not in node_name[1:]:
        return None
    return ".".join(node_name.strip("/").split("/")[:-1])


def conv_tensors_from_onnx(path: Path) -> list[tuple[str | None, np.ndarray, np.ndarray | None]]:
    """Every Conv of the graph in file order: (torch module path if the node name carries one, W, b)."""
    model = onnx.load(str(path))
    values = _initializer_values(model.graph)
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        try:
            weight = values[node.input[1]]
            bias = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        except KeyError as err:
            raise CheckpointError(f"{path}: Conv {node.name} has a weight that is not a constant ({err})") from err
        convs.append((_module_path(node.name), weight, bias))
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        raise CheckpointError(f"{path}: unfolded BatchNormalization nodes are not supported by the ONNX importer")
    return convs


def state_dict_from_onnx(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Map an exported graph's Conv weights (BatchNorm folded into them) onto our model's convs.

    Convs are matched by the torch module path in their node names when every node has one, otherwise in
    forward-execution order; every tensor's shape is checked. Each BatchNorm after a conv becomes identity.
    """
    convs = conv_tensors_from_onnx(path)
    ours = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(ours):
        raise CheckpointError(f"{path}: graph has {len(convs)} Conv nodes, {type(model).__name__} has {len(ours)}")
    by_name = {name: (w, b) for name, w, b in convs if name}
    if len(by_name) == len(ours) and set(by_name) == {name for name, _ in ours}:
        pairs = [(name, module, *by_name[name]) for name, module in ours]
    else:  # no usable names: trust forward-execution order, guarded by shapes
        pairs = [(name, module, w, b) for (name, module), (_, w, b) in zip(ours, convs)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    for name, module, weight, bias in pairs:
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise CheckpointError(f"{path}: conv {name} weight {weight.shape} vs model {tuple(module.weight.shape)}")
        if bias is None or tuple(bias.shape) != (module.out_channels,):
            raise CheckpointError(f"{path}: conv {name} has no bias of shape ({module.out_channels},)")
        state[f"{name}.weight"] = torch.from_numpy(weight.copy())
        state[f"{name}.bias"] = torch.from_numpy(bias.copy())
        bn_name = name.rsplit(".", 1)[0] + ".bn_s1" if name.endswith("conv_s1") else None
        if bn_name and isinstance(modules.get(bn_name), nn.BatchNorm2d):
            bn = modules[bn_name]
            state[f"{bn_name}.weight"] = torch.ones_like(bn.weight)
            state[f"{bn_name}.bias"] = torch.zeros_like(bn.bias)
            state[f"{bn_name}.running_mean"] = torch.zeros_like(bn.running_mean)
            # (x - 0) / sqrt(var + eps) == x exactly when var + eps == 1
            state[f"{bn_name}.running_var"] = torch.full_like(bn.running_var, 1.0 - bn.eps)
    return state


def load_model(config: ModelConfig, weights: Path, weight_format: str | None = None) -> nn.Module:
    """Build ``config``'s architecture and load ``weights`` (state dict or upstream ONNX) strictly."""
    weights = Path(weights)
    fmt = weight_format or ("onnx" if weights.suffix == ".onnx" else "state_dict")
    model = build_model(config)
    if fmt in ("onnx", "npm-chunked-onnx"):
        state = state_dict_from_onnx(model, weights)
    else:
        state = read_state_dict(weights)
        adapt = getattr(model, "adapt_checkpoint", None)  # the one seam for an architecture's format quirks
        if adapt is not None:
            state = adapt(state)
    return load_into(model, state, str(weights))


def upcast_graph_to_fp32(source: Path, target: Path) -> Path:
    """The same graph computing in fp32: fp16 initializers widened, Casts to fp16 turned into Casts to fp32.

    A graph that computes in fp16 (imgly's "medium") differs from any fp32 model by its own rounding; its fp32
    twin isolates the weight import, which must then match to float precision.
    """
    from onnx import TensorProto
    from common.files import atomic_write_bytes

    model = onnx.load(str(source))
    for index, init in enumerate(model.graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
    del model.graph.value_info[:]  # recorded fp16 types no longer hold
    atomic_write_bytes(Path(target), model.SerializeToString())
    return Path(target)
