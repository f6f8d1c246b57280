"""The weight codec: the .ccw container round trip, corruption refused, palette rounding, bit allocation, and a
coded variant through the export pipeline's gate (random-init U^2-NetP at 64 px)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize import ccw
from quantize.codec import Layer, allocate, code_layer
from quantize.codec_stats import ConvSpec, InputMoments
from quantize.palette import init_palettes

SIZE = 64


def _onnx_with(tensors: dict[str, np.ndarray]) -> bytes:
    """A small valid ONNX file holding ``tensors`` as initializers (and one float tensor between them)."""
    inits = [numpy_helper.from_array(a, n) for n, a in tensors.items()]
    inits.insert(1, numpy_helper.from_array(np.linspace(-1, 1, 7, dtype=np.float32), "between"))
    nodes = [helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT) for n in tensors]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(n + "_f", TensorProto.FLOAT, None)
                                               for n in tensors], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _palette_matrix(rows: int, columns: int, bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palettes = np.sort(rng.choice(np.arange(-128, 128), (rows, 1 << bits)), axis=1)
    return np.take_along_axis(palettes, rng.integers(0, 1 << bits, (rows, columns)), axis=1).astype(np.int8)


@pytest.mark.parametrize("layout", ["packed", "aligned"])
def test_round_trip_is_byte_identical_at_every_width(layout):
    tensors = {f"w{b}": _palette_matrix(5 + b, 9 * (3 + b), b, b).reshape(5 + b, 3 + b, 3, 3) for b in range(1, 9)}
    data = _onnx_with(tensors)
    width = {"packed": lambda b: b, "aligned": lambda b: next(w for w in ccw.ALIGNED_WIDTHS if w >= b)}[layout]
    table = {n: (int(n[1:]), width(int(n[1:])), a[0].size) for n, a in tensors.items()}
    container = ccw.encode(data, table)
    assert ccw.decode(container) == data
    assert hashlib.sha256(ccw.decode(container)).digest() == hashlib.sha256(data).digest()
    assert ccw.encode(data, table) == container  # deterministic
    info = ccw.summary(container)
    assert info["tensors"] == 8 and info["weights_by_bits"] == {str(b): tensors[f"w{b}"].size for b in range(1, 9)}
    assert info["skeleton_bytes"] == len(data) - sum(a.size for a in tensors.values())


def test_too_many_values_in_a_row_are_refused():
    q = _palette_matrix(4, 36, 3, 0)
    q[2, :9] = np.arange(-100, -91)  # 9 new values: more than 2**3 in row 2
    data = _onnx_with({"w": q})
    with pytest.raises(ValueError, match=r"w: row 2 has \d+ distinct values, more than 2\*\*3"):
        ccw.encode(data, {"w": (3, 4, 36)})


def test_a_flipped_byte_is_refused_with_a_clear_error():
    data = _onnx_with({"w": _palette_matrix(6, 27, 3, 1), "v": _palette_matrix(3, 18, 2, 2)})
    container = ccw.encode(data, {"w": (3, 3, 27), "v": (2, 2, 18)})
    for position in (9, 45, 80, 100, len(container) // 2, len(container) - 1):
        bad = bytearray(container)
        bad[position] ^= 0x10
        with pytest.raises(ccw.ContainerError, match="corrupt"):
            ccw.decode(bytes(bad))
    with pytest.raises(ccw.ContainerError, match="bad magic"):
        ccw.decode(b"XCW1" + container[4:])
    with pytest.raises(ccw.ContainerError, match="version"):
        ccw.decode(container[:4] + (2).to_bytes(4, "little") + container[8:])


def _correlated_layer(rows: int, cin: int, seed: int = 0) -> tuple[Layer, InputMoments]:
    rng = np.random.default_rng(seed)
    columns = cin * 9
    mix = rng.normal(size=(columns, columns)) * 0.3 + np.eye(columns)
    x = rng.normal(size=(4 * columns, columns)) @ mix + 0.2
    w = rng.laplace(size=(rows, columns)) * 0.05
    spec = ConvSpec("w", "conv", "x", (rows, cin, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    scale = np.abs(w).max(axis=1) / 127
    return Layer(spec, None, w, scale), InputMoments((x.T @ x).astype(np.float32), x.sum(axis=0), len(x))


def test_error_compensating_rounding_beats_nearest_and_keeps_widths():
    layer, moments = _correlated_layer(12, 8)
    q8 = np.clip(np.rint(layer.target), -128, 127).astype(np.int8)
    coded = code_layer(layer, moments, (2, 3, 4, 8), q8, None)
    h = moments.second_moment
    for bits in (2, 3, 4):
        q = coded[bits].q
        assert max(len(np.unique(row)) for row in q) <= 1 << bits
        levels = init_palettes(layer.target, np.diag(h).copy(), bits)
        nearest = np.take_along_axis(levels, np.abs(layer.target[:, :, None] - levels[:, None, :]).argmin(2), 1)
        delta = (nearest - layer.target) * layer.scale[:, None]
        plain = np.einsum("ij,ij->", delta @ h, delta) / np.einsum("ij,ij->", layer.w @ h, layer.w)
        assert coded[bits].error < 0.7 * plain, bits
    assert coded[2].error > coded[3].error > coded[4].error > coded[8].error


def test_allocation_meets_the_budget_and_keeps_fixed_layers():
    sizes = {"a": 1000, "b": 100_000, "c": 50_000, "d": 10}
    errors = {n: {b: 10.0 ** -b * (5 if n == "c" else 1) for b in (2, 3, 4, 5, 6, 8)} for n in sizes}
    for budget in (2.1, 2.5, 3.0, 4.0):
        plan = allocate(sizes, errors, budget, fixed={"d": 8, "a": 8})
        assert plan.average_bits <= budget + 1e-9 and plan.bits["d"] == 8 and plan.bits["a"] == 8
        assert set(plan.bits.values()) <= {2, 3, 4, 5, 6, 8}
    assert allocate(sizes, errors, 3.0).bits["c"] >= allocate(sizes, errors, 3.0).bits["b"]  # more sensitive
    with pytest.raises(ValueError, match="below the least"):
        allocate(sizes, errors, 2.0, fixed={"a": 8})


# ---------------------------------------------------------------- through the pipeline

# `coded_build` (tests/conftest.py): shared with the browser delivery tests, built once per session.


def test_coded_variants_pass_the_gate_with_their_containers(coded_build):
    build, data, _, _ = coded_build
    assert data["gate"]["passed"]
    for variant, budget in (("int8p2", 2.0), ("int8p3", 3.0)):
        step = data["stages"][f"variant:{variant}"]
        result, onnx_file = step["result"], build / data["variants"][variant]["path"]
        container = (build / result["container"]["path"]).read_bytes()
        assert result["container"]["path"] == f"u2netp.{variant}.ccw"
        assert hashlib.sha256(container).hexdigest() == result["container"]["sha256"]
        assert ccw.decode(container) == onnx_file.read_bytes()
        assert len(container) < 0.75 * onnx_file.stat().st_size
        assert step["params"]["budget"] == budget and step["params"]["codec_photos"]
        assert result["int8_base"] == "reused"  # the build's own int8 file
        allocation = result["allocation"]
        # the budget is in entropy-coded index bits per weight; palette widths average a little more
        assert allocation["entropy_bits"] <= budget + 1e-6 < allocation["average_bits"] + 0.5
        bits = {n: layer["bits"] for n, layer in allocation["layers"].items()}
        assert set(bits.values()) <= {2, 3, 4, 8} and 2 in bits.values()
        first, *_, last = bits.values()
        assert first == last == 8  # the first Conv and the alpha head stay int8
        # each coded layer's error is weighted by its own measured effect on alpha (codec_sensitivity)
        assert set(allocation["sensitivity"]) == set(list(bits)[1:-1])
        assert min(allocation["sensitivity"].values()) >= 0 < max(allocation["sensitivity"].values())
        _widths_hold(onnx_file, bits)


def _widths_hold(onnx_file, bits: dict[str, int]) -> None:
    """Every Conv weight of the coded graph uses at most 2**bits values per output channel."""
    model = onnx.load(str(onnx_file))
    producer = {o: n for n in model.graph.node for o in n.output}
    arrays = {i.name: i for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.name in bits:
            q = numpy_helper.to_array(arrays[producer[node.input[1]].input[0]])
            rows = q.reshape(q.shape[0], -1)
            assert max(len(np.unique(r)) for r in rows) <= 1 << bits[node.name], node.name
            checked += 1
    assert checked == len(bits)


def test_int8_and_coded_graphs_differ_only_in_conv_weights_and_biases(coded_build):
    build, data, _, _ = coded_build
    int8 = onnx.load(str(build / data["variants"]["int8"]["path"]))
    coded = onnx.load(str(build / data["variants"]["int8p3"]["path"]))
    assert [n.SerializeToString() for n in int8.graph.node] == [n.SerializeToString() for n in coded.graph.node]
    before = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    changed = {i.name for i in coded.graph.initializer if not np.array_equal(numpy_helper.to_array(i), before[i.name])}
    kinds = {i.name: i.data_type for i in coded.graph.initializer}
    assert changed and {kinds[n] for n in changed} <= {TensorProto.INT8, TensorProto.INT32}


def test_rerun_skips_the_coded_steps(coded_build):
    build, _, _, again = coded_build
    assert list((build.parent / "cache" / "codec").glob("moments-*/index.txt"))  # measured once, kept
    for variant in ("int8p2", "int8p3"):
        assert f"[variant:{variant}] unchanged, skipped" in again


def test_int8_keeps_its_head_in_float(coded_build):
    """No int8 rounding between the last Conv and the outputs (quantize.static_int8.keep_head_float): the
    logits' uint8 grid decided every pixel near the 0.5 cut."""
    build, data, _, _ = coded_build
    for variant in ("int8", "int8p3"):
        model = onnx.load(str(build / data["variants"][variant]["path"]))
        producer = {o: n for n in model.graph.node for o in n.output}
        for output in model.graph.output:
            tensor, seen = output.name, []
            while producer[tensor].op_type != "Conv":
                seen.append(producer[tensor].op_type)
                tensor = producer[tensor].input[0]
            assert not {"QuantizeLinear", "DequantizeLinear"} & set(seen), (variant, output.name, seen)


def test_int8_reads_the_photo_in_float(coded_build):
    """No int8 rounding of the preprocessed photo (quantize.static_int8.keep_input_float): IS-Net's ``p/255 - 0.5``
    on onnxruntime's uint8 grid merged neighbouring pixel levels."""
    build, data, _, _ = coded_build
    for variant in ("int8", "int8p3"):
        model = onnx.load(str(build / data["variants"][variant]["path"]))
        inputs = {i.name for i in model.graph.input}
        readers = [n.op_type for n in model.graph.node if inputs & set(n.input)]
        assert readers and "QuantizeLinear" not in readers, (variant, readers)


def test_keep_input_float_rounds_no_pixel():
    """A photo normalised as IS-Net does (p/255 - 0.5) through a Q/DQ pair with onnxruntime's 1/255 step and
    zero point 128 loses levels (each value sits half-way between two); with the pair removed all 256 levels
    reach the Conv, which still runs."""
    import onnxruntime as ort
    from onnx import helper

    from quantize.static_int8 import keep_input_float
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Conv", ["dq", "w"], ["y"])]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 16, 16])
    graph = helper.make_graph(nodes, "input", [io("x")], [io("y")], [scale, zero, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (np.arange(256, dtype=np.float32).reshape(1, 1, 16, 16) / 255 - 0.5).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert len(np.unique(before)) < 240  # half-way values rounded either side: neighbouring levels merged
    assert keep_input_float(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, x)


def test_keep_head_float_on_a_graph_whose_outputs_share_a_tail():
    """Two outputs behind one Q/DQ pair: the pair goes once, the outputs keep their names, the graph still runs."""
    import onnxruntime as ort
    from onnx import helper

    from quantize.static_int8 import keep_head_float
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"]),
             helper.make_node("QuantizeLinear", ["logits", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Sigmoid", ["dq"], ["alpha"]),
             helper.make_node("Relu", ["dq"], ["relu"])]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 2, 2])
    graph = helper.make_graph(nodes, "head", [io("x")], [io("alpha"), io("relu")], [scale, zero, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert keep_head_float(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "Sigmoid", "Relu"]
    x = np.array([[[[0.03, -0.04], [1.0, 0.0]]]], np.float32)
    alpha, relu = ort.InferenceSession(model.SerializeToString()).run(["alpha", "relu"], {"x": x})
    np.testing.assert_allclose(alpha, 1 / (1 + np.exp(-x)), rtol=1e-6)  # no 0.1 grid any more
    np.testing.assert_allclose(relu, np.maximum(x, 0))


def test_a_coded_variant_is_remade_when_the_int8_recipe_changes():
    """The coded recipe records the int8 recipe's params (calibration photos, float input and head): a build made
    before a change to int8 must not keep a coded variant on the old base."""
    from models.registry import get_model_config
    from quantize.recipes import Calibration, get_recipe
    config, calibration = get_model_config("isnet-imgly"), Calibration([], lambda p: {}, {"a.jpg": "0" * 64})
    assert get_recipe("int8p3").params(config, calibration)["int8"] == get_recipe("int8").params(config, calibration)
