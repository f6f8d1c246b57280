"""How much the network's output cares about each conv layer's weight error: measured, layer by layer.

For each layer, the graph is run on a few calibration photos with only that layer coded at a low width (the
rest as the int8 graph has them); the change of the output (mean squared alpha difference to the uncoded
graph) divided by the layer's relative output error is its sensitivity. The bit allocation then minimises
Σ sensitivity × relative error: a layer whose errors reach the alpha map more strongly gets more bits.
Layers of one stage differ by up to ~40× (IS-Net stage1: its input Conv 0.027, its second 7e-4), so one figure
per stage (measured before) spent bits where they did not count: at about the same size (16.6 / 16.7 MB), IoU
vs fp32 on the 6 parity photos 0.98861 → 0.99326 mean, alpha MSE on 20 photos of data/calib-photos (not the 4
measured here) 1.5e-4 → 5.5e-5. The output is the alpha map, so changes near the 0.5 cut (where the sigmoid is
steepest) count most, which is what IoU@0.5 and edge quality see.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from common.sessions import statistics_session
from quantize.codec import Coded, Layer, apply

PROBE_BITS = 2
# Run the probes unfused (common.sessions.statistics_session): the same sensitivities on CPUs without VNNI
# (AVX2's int8 kernel saturates), at ~4× the time. Fused int8 kernels agree on VNNI and AMX CPUs.
UNFUSED = False


def _outputs(model: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = statistics_session(model, unfused=UNFUSED)
    return [session.run(None, x)[0] for x in inputs]


def measure_sensitivity(int8: onnx.ModelProto, layers: Sequence[Layer], table: Mapping[str, Mapping[int, Coded]],
                        inputs: Sequence[dict[str, np.ndarray]], skip: Sequence[str] = (),
                        bits: int = PROBE_BITS, log: Callable[[str], None] = print) -> dict[str, float]:
    """Layer (node name) → sensitivity (output MSE per unit of relative layer error), ``skip``'s layers left
    out. ``inputs``: the graph's inputs for each photo."""
    uncoded = {layer.spec.node: table[layer.spec.node][8] for layer in layers}
    reference = _outputs(apply(int8, layers, uncoded), inputs)
    found = {}
    for layer in layers:
        node = layer.spec.node
        if node in skip or bits not in table[node]:
            continue
        outputs = _outputs(apply(int8, layers, {**uncoded, node: table[node][bits]}), inputs)
        mse = float(np.mean([np.mean((a - b) ** 2, dtype=np.float64) for a, b in zip(outputs, reference)]))
        error = table[node][bits].error
        found[node] = mse / max(error, 1e-30)
        log(f"  codec: sensitivity {len(found)} {node}: output MSE {mse:.2e} at {bits} bits, layer error {error:.2e}")
    return found
