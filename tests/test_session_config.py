"""Weight-only quantized graphs get the onnxruntime setting that folds their dequantization at load time."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.onnx_graph import runtime_session_config
from common.sessions import cpu_session


def _conv_graph(quantize_activations: bool) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(-8, 10, dtype=np.int8).reshape(2, 1, 3, 3), "w_q")
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"])]
    x = "x"
    if quantize_activations:
        azero = numpy_helper.from_array(np.array(0, np.int8), "azero")
        nodes += [helper.make_node("QuantizeLinear", ["x", "scale", "azero"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "scale", "azero"], ["xd"])]
        x = "xd"
    nodes.append(helper.make_node("Conv", [x, "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    inits = [w, scale, zero] + ([azero] if quantize_activations else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_only_graph_folds_dequantization(tmp_path):
    model = _conv_graph(quantize_activations=False)
    assert runtime_session_config(model) == {"session.disable_quant_qdq": "1"}
    path = tmp_path / "w.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    y = cpu_session(path).run(None, {"x": x})[0]
    w = (np.arange(-8, 10, dtype=np.float32) * 0.05).reshape(2, 1, 3, 3)
    padded = np.pad(x[0, 0], 1)
    expected = np.array([[[(padded[i:i + 3, j:j + 3] * w[o, 0]).sum() for j in range(8)] for i in range(8)] for o in range(2)])
    np.testing.assert_allclose(y[0], expected, atol=1e-5)  # folding changes speed, never the numbers


def test_activation_quantized_graph_keeps_qdq_groups():
    assert runtime_session_config(_conv_graph(quantize_activations=True)) == {}
