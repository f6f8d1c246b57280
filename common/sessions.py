"""onnxruntime CPU sessions, opened with the settings the graph itself asks for, and graphs run in sequence."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from common.contract import INPUT_NAME
from common.memory import release_memory
from common.onnx_graph import runtime_session_config


def default_threads() -> int:
    """onnxruntime intra-op threads when the caller names none: ``$CLEARCUT_THREADS``, else 2."""
    return int(os.environ.get("CLEARCUT_THREADS") or 2)


def cpu_session(graph: Path | onnx.ModelProto, threads: int | None = None,
                optimization: ort.GraphOptimizationLevel | None = None) -> ort.InferenceSession:
    """A CPU session of a graph file or an in-memory graph, with the session config the graph asks for;
    sequential execution, ``threads`` intra-op threads (None: ``default_threads``); ``optimization``: the graph
    optimization level (None: onnxruntime's default, all)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimization is not None:
        options.graph_optimization_level = optimization
    options.log_severity_level = 3
    for key, value in runtime_session_config(graph).items():
        options.add_session_config_entry(key, value)
    source = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# onnxruntime intra-op threads of the statistics sessions, whatever the machine or $CLEARCUT_THREADS: below level
# "all", MLAS picks its convolution algorithm by thread count (1 and 2 threads give other bits)
STATISTICS_THREADS = 2


def statistics_session(graph: Path | onnx.ModelProto, unfused: bool = False) -> ort.InferenceSession:
    """A CPU session for the statistics a build decides on (codec moments and sensitivities), at a fixed thread
    count (``STATISTICS_THREADS``) and without onnxruntime's layout optimization (NCHWc, level "all"), which
    blocks channels by the CPU's vector width (16 with AVX-512, 8 with AVX2) and so sums in another order: up
    to level "extended", MLAS's fp32 convolutions give the same bits with AVX2 and AVX-512 (measured under
    qemu-user as a Haswell, bench/reproduce.py). A QDQ graph is fused into int8 kernels at that level: exact
    int32 sums with VNNI or AMX, but the AVX2 u8s8 kernel saturates its 16-bit pair sums; ``unfused``: no
    optimizations, the graph runs as it reads (dequantized values through fp32 convolutions), the same bits on
    any of these CPUs, ~4× slower (IS-Net int8 at 1024²: 1.0 → 4.1 s per run)."""
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if unfused else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return cpu_session(graph, STATISTICS_THREADS, level)


def run_stage(session: ort.InferenceSession, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run one graph on the named values so far (its inputs by name); add its outputs to `values` and return
    them."""
    outputs = session.run(None, {i.name: values[i.name] for i in session.get_inputs()})
    values.update(zip([o.name for o in session.get_outputs()], outputs))
    return outputs


def run_stages(sessions_or_paths: Sequence, x: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Run graphs in order (onnxruntime CPU), each reading its inputs by name from the values so far;
    returns the last graph's first output — one array for one input, a list for a list of inputs. A single
    graph is the one-element case. Graphs given as paths are opened once for all inputs and released before
    the next one opens, like the browser runs them (one session in memory at a time)."""
    batch = isinstance(x, list)
    values = [{INPUT_NAME: one} for one in (x if batch else [x])]
    results: list[np.ndarray] = []
    for item in sessions_or_paths:
        opened = isinstance(item, (str, Path))
        session = cpu_session(item) if opened else item
        results = [run_stage(session, v)[0] for v in values]
        if opened:
            del session
            release_memory()
    return results if batch else results[0]
