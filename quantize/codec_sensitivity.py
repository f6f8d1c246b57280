"""How much each part of the network's output cares about its conv weights' error: measured, per group of
layers (a stage: the node name's first two path parts, e.g. ``/model/stage5d``).

For each group, the graph is run on a few calibration photos with only that group's layers coded at a low
width (the rest as the int8 graph has them); the change of the output (mean squared alpha difference to the
uncoded graph) divided by the group's summed relative layer errors is the group's sensitivity. The bit
allocation then minimises Σ sensitivity × relative error: a layer whose errors reach the alpha map more
strongly gets more bits. The output is the alpha map, so changes near the 0.5 cut (where the sigmoid is
steepest) count most, which is what IoU@0.5 and edge quality see.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from common.sessions import cpu_session
from quantize.codec import Coded, Layer, apply

PROBE_BITS = 2


def group_of(node: str) -> str:
    parts = node.split("/")
    return "/".join(parts[:3]) if len(parts) > 3 else node


def _outputs(model: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = cpu_session(model)
    return [session.run(None, x)[0] for x in inputs]


def measure_sensitivity(int8: onnx.ModelProto, layers: Sequence[Layer], table: Mapping[str, Mapping[int, Coded]],
                        inputs: Sequence[dict[str, np.ndarray]], skip: Sequence[str] = (),
                        bits: int = PROBE_BITS, log: Callable[[str], None] = print) -> dict[str, float]:
    """Group → sensitivity (output MSE per unit of summed relative layer error), groups of ``skip``'s layers
    left out. ``inputs``: the graph's inputs for each photo."""
    uncoded = {layer.spec.node: table[layer.spec.node][8] for layer in layers}
    reference = _outputs(apply(int8, layers, uncoded), inputs)
    groups: dict[str, list[str]] = {}
    for layer in layers:
        if layer.spec.node not in skip:
            groups.setdefault(group_of(layer.spec.node), []).append(layer.spec.node)
    found = {}
    for group, nodes in groups.items():
        probe = dict(uncoded)
        probe.update({n: table[n][bits] for n in nodes if bits in table[n]})
        outputs = _outputs(apply(int8, layers, probe), inputs)
        mse = float(np.mean([np.mean((a - b) ** 2, dtype=np.float64) for a, b in zip(outputs, reference)]))
        error = sum(table[n][bits].error for n in nodes if bits in table[n])
        found[group] = mse / max(error, 1e-30)
        log(f"  codec: sensitivity {group}: output MSE {mse:.2e} at {bits} bits, Σ layer error {error:.2e}")
    return found
