"""The WebGPU checks the export steps run on every fp32 graph, and the gate that turns them into failures."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.onnx_graph import WEBGPU_MAX_INPUTS, webgpu_problems


def _graph(nodes, inputs, outputs, initializers=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_a_browser_ready_graph_has_no_problems():
    weight = numpy_helper.from_array(np.zeros((2, 3, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], strides=[1, 1],
                            pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    assert webgpu_problems(_graph([conv], [_tensor("x", [1, 3, 8, 8])], [_tensor("y", [1, 2, 8, 8])], [weight])) == []


def test_each_webgpu_problem_is_named():
    weight = numpy_helper.from_array(np.zeros((2, 3, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv_defaults")  # kernel_shape etc. left implicit
    many = WEBGPU_MAX_INPUTS + 1
    concat = helper.make_node("Concat", ["c"] * many, ["y"], name="wide_concat", axis=1)
    model = _graph([conv, concat], [_tensor("x", [1, 3, "height", 8])], [_tensor("y", [1, "channels", "height", 8])], [weight])
    problems = "\n".join(webgpu_problems(model))
    assert "without a static shape" in problems
    assert f"Concat wide_concat has {many} tensors (WebGPU allows {WEBGPU_MAX_INPUTS})" in problems
    assert "Conv conv_defaults relies on attribute defaults" in problems


def test_the_gate_fails_on_recorded_webgpu_problems(tmp_path):
    from export.pipeline import Build, ExportOptions, gate
    from models.registry import get_model_config

    build = Build(ExportOptions(config=get_model_config("u2netp"), variants=["fp32"], out_dir=tmp_path))
    numbers = {"max_abs": 0.0, "mean_abs": 0.0, "iou_mean": 1.0, "iou_worst": 1.0, "worst_image": "a.png",
               "latency": {"median_ms": 1.0}}
    results = {"export": {"webgpu_problems": ["Concat c has 9 tensors (WebGPU allows 7)"]}, "parity:fp32": numbers}
    parity, failures, fatal = gate(build, results)
    assert parity["fp32"]["passed"] and failures == ["export: WebGPU: Concat c has 9 tensors (WebGPU allows 7)"]
    assert fatal == failures
    results["export"] = {"webgpu_problems": []}
    assert gate(build, results)[1] == []
