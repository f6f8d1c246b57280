"""What the weight codec's error-compensating rounding needs to know about each convolution's input: the
second moment ``H = E[x xᵀ]`` of its im2col patches (``x`` has the weight's flattened input layout
``Cin × kh × kw``) and their mean ``E[x]``, over calibration photos run through the fp32 graph in
onnxruntime (torch-free).

A convolution's output error for a weight error ``ΔW`` (Cout × K) is ``E‖ΔW x‖² = tr(ΔW H ΔWᵀ)``; the codec
minimises that. Output positions are sampled per photo and layer (fixed seed): between ``MIN_POSITIONS`` and
``MAX_POSITIONS``, fewer for wide layers (``PATCH_BUDGET``), whose K² cost per patch dominates; the deep 32²
and 16² maps use every position.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from threadpoolctl import threadpool_limits

from common.sessions import statistics_session

MAX_POSITIONS = 4096  # output positions sampled per photo and layer, at most ...
MIN_POSITIONS = 1024  # ... and at least (or all the map has)
PATCH_BUDGET = 1 << 22  # in between: about this many patch values per photo and layer (wide layers sample fewer)
SMALL_COLUMNS = 2048  # layers with fewer patch values run their products on one BLAS thread


@dataclass(frozen=True)
class ConvSpec:
    """One Conv of the fp32 graph: its weight initializer and how it reads its input."""

    weight: str  # initializer name in the fp32 graph
    node: str
    input: str  # the activation the Conv reads
    shape: tuple[int, ...]  # (Cout, Cin, kh, kw)
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]

    @property
    def columns(self) -> int:
        return int(np.prod(self.shape[1:]))


def conv_specs(model: onnx.ModelProto) -> list[ConvSpec]:
    """The graph's 2-D, ungrouped Convs whose weight is an initializer, in graph order."""
    initializers = {i.name: i for i in model.graph.initializer}
    specs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in initializers:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = tuple(initializers[node.input[1]].dims)
        if len(shape) != 4 or attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
        specs.append(ConvSpec(node.input[1], node.name, node.input[0], shape, tuple(attrs.get("strides", [1, 1])),
                              (pads[0], pads[1], pads[2], pads[3]), tuple(attrs.get("dilations", [1, 1]))))
    return specs


def im2col(x: np.ndarray, spec: ConvSpec, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The patches (K × n, float32) the Conv multiplies at output positions ``(rows[i], cols[i])``;
    ``x`` is the Conv's input of one photo (Cin × H × W)."""
    _, _, kh, kw = spec.shape
    top, left, bottom, right = spec.pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    (sh, sw), (dh, dw) = spec.strides, spec.dilations
    taps = [padded[:, rows * sh + ky * dh, cols * sw + kx * dw] for ky in range(kh) for kx in range(kw)]
    return np.stack(taps, axis=1).reshape(spec.columns, len(rows))


@dataclass
class InputMoments:
    """Running sums of one Conv's patches: ``h = Σ x xᵀ`` (float32), ``s = Σ x`` (float64), ``n`` patches."""

    h: np.ndarray
    s: np.ndarray
    n: int = 0

    @property
    def second_moment(self) -> np.ndarray:
        return self.h / max(self.n, 1)

    @property
    def mean(self) -> np.ndarray:
        return self.s / max(self.n, 1)


def positions_per_photo(columns: int) -> int:
    return min(MAX_POSITIONS, max(MIN_POSITIONS, PATCH_BUDGET // columns))


def collect_moments(fp32: Path, photos: Sequence[Path], load: Callable[[Path], dict[str, np.ndarray]],
                    specs: Sequence[ConvSpec], seed: int = 0,
                    progress: Callable[[int, int, dict], None] | None = None) -> dict[str, InputMoments]:
    """Run the fp32 graph on each photo (``load`` makes its inputs) with every Conv input as an extra output,
    and add each Conv's patches to its moments. Returns moments by weight name. The graph runs in
    ``common.sessions.statistics_session`` (activations with the same bits on AVX2 and AVX-512 CPUs)."""
    model = onnx.load(str(fp32))
    outputs = {o.name for o in model.graph.output}
    wanted = list(dict.fromkeys(s.input for s in specs))
    for name in wanted:
        if name not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    moments = {s.weight: InputMoments(np.zeros((s.columns, s.columns), np.float32), np.zeros(s.columns)) for s in specs}
    with tempfile.TemporaryDirectory(prefix="clearcut-codec-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        del model
        session = statistics_session(probe)
    rng = np.random.default_rng(seed)
    # small layers with one BLAS thread (threads cost more than they save on small products), in graph order
    small = [s for s in specs if s.columns < SMALL_COLUMNS]
    large = [s for s in specs if s.columns >= SMALL_COLUMNS]
    for index, photo in enumerate(photos):
        values = dict(zip(wanted, session.run(wanted, load(photo))))
        samples = {s.weight: _positions(values[s.input].shape[2:], s, positions_per_photo(s.columns), rng) for s in specs}
        for group, threads in ((small, 1), (large, None)):
            with threadpool_limits(threads, user_api="blas"):
                for spec in group:
                    patches = im2col(values[spec.input][0], spec, *samples[spec.weight]).astype(np.float64)
                    m = moments[spec.weight]
                    # one photo's Σ x xᵀ in float64, rounded to float32, added in photo order: float32 products
                    # differ between OpenBLAS's kernels (SkylakeX vs Haswell: 17 of 30 U²-NetP layers, 5e-7),
                    # float64 ones by ~1e-15, which the rounding hides (bench/reproduce.py). Costs ~2× the
                    # float32 product (IS-Net at 1024²: ~8.5 → ~17 s per photo).
                    m.h += (patches @ patches.T).astype(np.float32)
                    m.s += patches.sum(axis=1, dtype=np.float64)
                    m.n += patches.shape[1]
        del values
        if progress:
            progress(index + 1, len(photos), moments)
    return moments


def _positions(size: tuple[int, int], spec: ConvSpec, limit: int, rng: np.random.Generator):
    _, _, kh, kw = spec.shape
    top, left, bottom, right = spec.pads
    (sh, sw), (dh, dw) = spec.strides, spec.dilations
    out_h = (size[0] + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (size[1] + left + right - dw * (kw - 1) - 1) // sw + 1
    total = out_h * out_w
    flat = np.arange(total) if total <= limit else np.sort(rng.choice(total, limit, replace=False))
    return flat // out_w, flat % out_w


def save_moments(moments: dict[str, InputMoments], folder: Path) -> None:
    """One ``.npz`` per Conv (uncompressed: H is dense float32), named by the index in ``index.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(moments)
    for i, name in enumerate(names):
        m = moments[name]
        np.save(folder / f"{i:04d}.h.npy", m.h)
        np.save(folder / f"{i:04d}.s.npy", m.s)
    (folder / "index.txt").write_text("".join(f"{i:04d}\t{moments[n].n}\t{n}\n" for i, n in enumerate(names)))


def load_moments(folder: Path, names: Iterable[str] | None = None, mmap: bool = True) -> dict[str, InputMoments]:
    wanted = set(names) if names is not None else None
    out = {}
    for line in (folder / "index.txt").read_text().splitlines():
        i, n, name = line.split("\t", 2)
        if wanted is None or name in wanted:
            out[name] = InputMoments(np.load(folder / f"{i}.h.npy", mmap_mode="r" if mmap else None),
                                     np.load(folder / f"{i}.s.npy"), int(n))
    return out

