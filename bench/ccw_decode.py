"""Decode time of the `.ccw` weight container in headless Chromium (`make bench-ccw`): a synthetic int8 ONNX with
IS-Net's number of conv weights (~44M) is coded with quantize.ccw at a few bit widths, in the aligned (index
widths 1/2/4/8) and packed (width = bits) layouts, and web_runtime/src/ccw.js decodes it in a page, timed
end to end (both sha256 checks included) and without the two sha256 passes.

    python -m bench.ccw_decode [--weights 44000000] [--bits 2,3,4] [--repeats 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from quantize import ccw
from common.chromium import launch
from web_runtime.serve import NginxServer

SRC = Path(__file__).resolve().parents[1] / "web_runtime" / "src"
MODULES = ["ccw.js", "errors.js", "store.js"]
# conv shapes (Cout, Cin·kh·kw) cycled until the weight count is reached: IS-Net-like 3×3 convs
SHAPES = [(64, 576), (128, 1152), (256, 2304), (512, 4608), (256, 4608), (64, 1728)]

DECODE_JS = """async ([url, sha256, bytes, repeats]) => {
  const { decodeContainer } = await import('/ccw.js');
  const container = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const digest = async (b) => crypto.subtle.digest('SHA-256', b);
  const total = [], shaIn = [], shaOut = [];
  let out;
  for (let i = 0; i < repeats; i++) {
    let t = performance.now();
    out = await decodeContainer(container, { sha256, bytes });
    total.push(performance.now() - t);
    t = performance.now(); await digest(container.subarray(40)); shaIn.push(performance.now() - t);
    t = performance.now(); await digest(out); shaOut.push(performance.now() - t);
  }
  return { total, shaIn, shaOut, length: out.length };
}"""


def synthetic_onnx(weights: int, bits: int, seed: int = 0) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """An ONNX file whose INT8 initializers (≥ `weights` values in all) use ≤ 2**bits values per row;
    returns it and name → (rows, columns)."""
    rng = np.random.default_rng(seed)
    inits, shapes, nodes, count, i = [], {}, [], 0, 0
    while count < weights:
        rows, columns = SHAPES[i % len(SHAPES)]
        palettes = np.sort(rng.integers(-128, 128, (rows, 1 << bits)), axis=1)
        q = np.take_along_axis(palettes, rng.integers(0, 1 << bits, (rows, columns)), axis=1).astype(np.int8)
        name = f"w{i}"
        inits.append(numpy_helper.from_array(q, name))
        inits.append(numpy_helper.from_array(rng.normal(size=rows).astype(np.float32), f"s{i}"))  # between them
        nodes.append(helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
        shapes[name] = (rows, columns)
        count += q.size
        i += 1
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(n + "_f", TensorProto.FLOAT, None)
                                               for n in shapes], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ccw_decode", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=int, default=44_000_000)
    parser.add_argument("--bits", default="2,3,4")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="ccw-bench-"))
    try:
        for f in MODULES:
            shutil.copyfile(SRC / f, root / f)
        (root / "index.html").write_text("<!doctype html><meta charset=utf-8><title>ccw bench</title>")
        cases = []
        for bits in (int(b) for b in args.bits.split(",")):
            onnx_bytes, shapes = synthetic_onnx(args.weights, bits)
            coded = sum(r * c for r, c in shapes.values())
            for layout in ("aligned", "packed"):
                width = bits if layout == "packed" else next(w for w in ccw.ALIGNED_WIDTHS if w >= bits)
                if layout == "packed" and width in ccw.ALIGNED_WIDTHS:
                    continue  # the same container as the aligned one
                started = time.perf_counter()
                container = ccw.encode(onnx_bytes, {n: (bits, width, c) for n, (_, c) in shapes.items()})
                encode_s = time.perf_counter() - started
                name = f"b{bits}-w{width}.ccw"
                (root / name).write_bytes(container)
                cases.append((bits, width, layout, name, coded, len(onnx_bytes), len(container), encode_s,
                              ccw.read_header(container)[0].hex()))
        for path in root.rglob("*"):
            path.chmod(0o644 if path.is_file() else 0o755)
        root.chmod(0o755)
        print(f"{'bits':>4} {'width':>5} {'layout':<8} {'weights':>10} {'onnx MB':>8} {'ccw MB':>7} "
              f"{'decode ms':>10} {'min':>5} {'w/o sha ms':>10} {'sha in':>7} {'sha out':>7}  (median of "
              f"{args.repeats} and min, Chromium headless)")
        with NginxServer(root, ort_dir="ort") as server, sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.goto(server.url + "/index.html")
            for bits, width, layout, name, coded, onnx_len, ccw_len, encode_s, sha in cases:
                r = page.evaluate(DECODE_JS, [f"/{name}", sha, onnx_len, args.repeats])
                assert r["length"] == onnx_len
                total, sha_in, sha_out = (statistics.median(r[k]) for k in ("total", "shaIn", "shaOut"))
                print(f"{bits:>4} {width:>5} {layout:<8} {coded:>10,} {onnx_len / 1e6:>8.1f} {ccw_len / 1e6:>7.1f} "
                      f"{total:>10.0f} {min(r['total']):>5.0f} {total - sha_in - sha_out:>10.0f} {sha_in:>7.0f} "
                      f"{sha_out:>7.0f}", flush=True)
            browser.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
