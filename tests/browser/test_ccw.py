"""The `.ccw` weight container decoded in Chromium (web_runtime/src/ccw.js): containers encoded by quantize/ccw.py
decode to exactly the ONNX bytes they were made from, at every index width in both layouts; corrupt containers
and a manifest that names other bytes are refused with `integrity`."""
from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize import ccw

DECODE_JS = """async ([b64, expected]) => {
  const { decodeContainer } = await import('/tiny/ccw.js');
  const container = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const events = [];
  try {
    const out = await decodeContainer(container, expected, (p) => events.push(p));
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', out));
    return { ok: true, sha256: Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join(''),
             bytes: out.length, events };
  } catch (e) {
    return { ok: false, code: e.code, name: e.name, message: e.message };
  }
}"""


def _coded_onnx(seed: int = 0) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """An ONNX file with one INT8 initializer per bit width 1..8 (≤ 2**bits values per row; row lengths that are
    not multiples of 8, so rows start mid-byte) and float tensors between them; name → (bits, columns)."""
    rng = np.random.default_rng(seed)
    inits, nodes, table = [], [], {}
    for bits in range(1, 9):
        rows, columns = 3 + 2 * bits, 8 * bits + 5 + (bits % 3)
        palettes = np.sort(rng.integers(-128, 128, (rows, 1 << bits)), axis=1)
        q = np.take_along_axis(palettes, rng.integers(0, 1 << bits, (rows, columns)), axis=1).astype(np.int8)
        name = f"w{bits}"
        inits += [numpy_helper.from_array(q, name), numpy_helper.from_array(rng.normal(size=bits).astype(np.float32), f"f{bits}")]
        nodes.append(helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
        table[name] = (bits, columns)
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(n + "_f", TensorProto.FLOAT, None)
                                               for n in table], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), table


def _width(bits: int, layout: str) -> int:
    return bits if layout == "packed" else next(w for w in ccw.ALIGNED_WIDTHS if w >= bits)


def _decode(harness, container: bytes, expected: dict) -> dict:
    return harness.page.evaluate(DECODE_JS, [base64.b64encode(container).decode(), expected])


@pytest.fixture(scope="module")
def coded_onnx():
    return _coded_onnx()


@pytest.mark.parametrize("layout", ["packed", "aligned"])
def test_python_containers_decode_to_the_same_bytes_in_chromium(harness, coded_onnx, layout):
    data, table = coded_onnx
    container = ccw.encode(data, {n: (b, _width(b, layout), c) for n, (b, c) in table.items()})
    assert {r.width for r in ccw.read_header(container)[3]} == {_width(b, layout) for b in range(1, 9)}
    expected = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    result = _decode(harness, container, expected)
    assert result["ok"], result
    assert result["sha256"] == expected["sha256"] and result["bytes"] == len(data)
    coded = sum(r.length for r in ccw.read_header(container)[3])
    assert result["events"][0] == {"loaded": 0, "total": coded} and result["events"][-1] == {"loaded": coded, "total": coded}


def test_every_width_alone_in_both_layouts(harness, coded_onnx):
    """One coded tensor at a time: a wrong index path for one width cannot hide behind another's."""
    data, table = coded_onnx
    expected = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for bits in range(1, 9):
        name = f"w{bits}"
        for width in sorted({_width(bits, "packed"), _width(bits, "aligned")}):
            container = ccw.encode(data, {name: (bits, width, table[name][1])})
            result = _decode(harness, container, expected)
            assert result["ok"] and result["sha256"] == expected["sha256"], (bits, width, result)


def test_corrupt_containers_and_other_bytes_are_refused(harness, coded_onnx):
    data, table = coded_onnx
    container = ccw.encode(data, {n: (b, b, c) for n, (b, c) in table.items()})
    expected = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    for position in (2, 5, 20, 100, len(container) // 2, len(container) - 1):
        bad = bytearray(container)
        bad[position] ^= 0x04
        result = _decode(harness, bytes(bad), expected)
        assert not result["ok"] and result["name"] == "ClearCutError" and result["code"] == "integrity", (position, result)
        assert "not used or cached" in result["message"]
    other = {"sha256": hashlib.sha256(data + b"x").hexdigest(), "bytes": len(data)}  # the manifest names other bytes
    result = _decode(harness, container, other)
    assert not result["ok"] and result["code"] == "integrity" and other["sha256"] in result["message"], result
