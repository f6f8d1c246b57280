"""Static int8 (QDQ, per-channel weights, entropy-calibrated activations) and dynamic quint8.

Calibration streams one image at a time: onnxruntime's histogram calibrators otherwise hold every
intermediate activation of every image at once (about 17 GB for IS-Net at 1024²).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from tqdm import tqdm

from common.files import atomic_write_bytes

# The activation scales stay as calibrated: the calibration session's fp32 kernels (no graph optimizations, fixed
# threads) give the same bits on AVX2 and AVX-512 CPUs (bench/reproduce.py: the same int8 base under qemu as a
# Haswell). Rounding them to a few significant bits, tried against kernel noise, cost quality on IS-Net
# (onnxruntime 1.32, 6 gate photos, IoU vs fp32 mean / worst): as calibrated 0.99505 / 0.97808, 5 bits
# 0.99316 / 0.97069, 4 bits 0.99358 / 0.97562.


class StreamingReader(CalibrationDataReader):
    """Yields preprocessed calibration images one by one; ``set_range`` lets onnxruntime feed them to the
    calibrator in strides of one so that histograms are updated and activations freed after each image."""

    def __init__(self, input_name: str, images: Sequence[Path], load: Callable[[Path], np.ndarray]):
        self.input_name, self.images, self.load = input_name, list(images), load
        self.start, self.end, self.position = 0, len(self.images), 0
        self.bar = tqdm(total=len(self.images), desc="calibrating int8", unit="img")

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.position = start_index, end_index, start_index

    def get_next(self):
        if self.position >= self.end:
            return None
        x = self.load(self.images[self.position])
        self.position += 1
        self.bar.update(1)
        return x if isinstance(x, dict) else {self.input_name: x}  # a dict: a graph with several inputs


def to_int8_static(source: Path, target: Path, calibration_images: Sequence[Path],
                   load: Callable[[Path], np.ndarray | dict], input_name: str = "input",
                   method: CalibrationMethod = CalibrationMethod.Entropy, head_in_float: bool = True,
                   input_in_float: bool = True) -> Path:
    if not calibration_images:
        raise ValueError("int8 calibration needs at least one image")
    reader = StreamingReader(input_name, calibration_images, load)
    with tempfile.TemporaryDirectory(prefix="clearcut-int8-") as tmp:
        out = Path(tmp) / "model.onnx"
        with _fixed_calibration_session():
            quantize_static(str(source), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                            extra_options={"CalibStridedMinMax": 1})
        reader.bar.close()
        if head_in_float or input_in_float:
            model = onnx.load(str(out))
            if head_in_float:
                keep_head_float(model)
            if input_in_float:
                keep_input_float(model)
            out.write_bytes(model.SerializeToString())
        atomic_write_bytes(target, out.read_bytes())
    return target


@contextlib.contextmanager
def _fixed_calibration_session():
    """onnxruntime's calibrators run the augmented fp32 graph in a session of default options (as many threads as
    cores); within this, that session has the fixed thread count of ``common.sessions.statistics_session`` and
    sequential execution (and, as onnxruntime sets it, no graph optimizations)."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibraterBase

    from common.sessions import STATISTICS_THREADS

    def create_inference_session(self) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = STATISTICS_THREADS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=options,
                                                  providers=self.execution_providers)

    original = CalibraterBase.create_inference_session
    CalibraterBase.create_inference_session = create_inference_session
    try:
        yield
    finally:
        CalibraterBase.create_inference_session = original


def to_quint8_dynamic(source: Path, target: Path) -> Path:
    """imgly's 'small' recipe (dynamic, quint8 weights): a comparison row, not shipped."""
    with tempfile.TemporaryDirectory(prefix="clearcut-quint8-") as tmp:
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QUInt8)
        atomic_write_bytes(target, out.read_bytes())
    return target


def keep_head_float(model: onnx.ModelProto) -> int:
    """Remove, in place, the QuantizeLinear/DequantizeLinear pairs between the last Conv and each graph output
    (IS-Net: the logits, their upsampling and the sigmoid's alpha). onnxruntime's static int8 quantizes the
    logits on a uint8 grid (a step of 0.21 for IS-Net), so every pixel within ±0.1 of the 0.5 cut is decided by
    rounding; kept in float, the head costs nothing measurable (the last Conv still runs on int8 inputs and
    weights, only its single-channel output and what follows stay float). Returns the pairs removed.

    Measured on IS-Net with onnxruntime 1.32 (6 parity photos, IoU vs fp32): 0.98759 mean / 0.9531 worst with
    the quantized head, 0.99065 / 0.9689 with it kept float."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    quantizers = {}  # the QuantizeLinear nodes from the outputs back to the last Conv (outputs may share a tail)
    for output in graph.output:
        tensor = output.name
        while tensor in producer and producer[tensor].op_type != "Conv":
            node = producer[tensor]
            upstream = producer.get(node.input[0])
            if node.op_type == "DequantizeLinear" and upstream is not None and upstream.op_type == "QuantizeLinear":
                quantizers[id(upstream)] = upstream
                tensor = upstream.input[0]
            else:
                tensor = node.input[0]
    for quantize in quantizers.values():
        _remove_pair(graph, quantize)
    return len(quantizers)


def keep_input_float(model: onnx.ModelProto) -> int:
    """Remove, in place, the QuantizeLinear/DequantizeLinear pairs that read a graph input directly, so the first
    layers read the preprocessed photo as it is (their weights stay int8, their outputs are quantized as before).

    The photo is 8-bit already, but normalised it rarely lands on a uint8 grid: IS-Net's ``p/255 - 0.5`` needs a
    zero point of 127.5, so on onnxruntime's 1/255 step with zero point 128 every pixel value sits half-way between
    two levels and float rounding sends neighbours to the same one (215 of 256 levels survive in a test), and
    per-channel mean/std (U2Net) cannot share one per-tensor grid at all. Measured on IS-Net, onnxruntime 1.32,
    IoU vs fp32: 6 parity photos 0.99065 mean / 0.9689 worst with the input quantized, 0.99430 / 0.9807 in float;
    10 unlabelled calibration photos 0.99492 → 0.99919 (alpha MSE 1.5e-4 → 4.3e-6); 60 eval-dev photos, weighted
    F vs ground truth 0.8674 → 0.8751 (fp32 0.8750). The first Conv then runs in float: one 3-channel Conv.
    Returns the pairs removed."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    removed = 0
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inputs]:
        readers = [n for n in graph.node if quantize.output[0] in n.input]
        if any(n.op_type != "DequantizeLinear" or n.output[0] in outputs for n in readers):
            continue  # something needs the quantized tensor itself (or a graph input would need renaming)
        _remove_pair(graph, quantize)
        removed += 1
    return removed


def _remove_pair(graph: onnx.GraphProto, quantize: onnx.NodeProto) -> None:
    """Drop ``quantize`` and the DequantizeLinear nodes that read it; their readers read the float tensor again.
    A dequantized graph output keeps its name: the float tensor takes it."""
    source = quantize.input[0]
    outputs = {o.name for o in graph.output}
    dequantizers = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]]
    graph.node.remove(quantize)
    for dequantize in dequantizers:
        target = dequantize.output[0]
        graph.node.remove(dequantize)
        for node in graph.node:
            if target in outputs:
                node.output[:] = [target if o == source else o for o in node.output]
                node.input[:] = [target if i == source else i for i in node.input]
            else:
                node.input[:] = [source if i == target else i for i in node.input]
        if target in outputs:
            source = target
