"""The coded variants' recipe: fp32 graph → int8 QDQ base → conv input statistics → every layer coded at every
width → widths allocated for the budget → the coded int8 ONNX (the variant file, gated like any variant) and
its ``.ccw`` container beside it, checked to decode to the same bytes.

The slow parts are cached (``$CLEARCUT_CACHE/codec/``), keyed by what they are computed from, so that the
variants of several budgets share them: the conv input moments (fp32 graph sha256 + photo sha256s, ~2.6 GB for
IS-Net at 1024²) and the table of coded layers (+ the int8 base's sha256 and the codec options).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from threadpoolctl import threadpool_limits

from common.files import atomic_write_bytes, sha256_file
from common.kernels import PINNED_CORETYPE, blas_kernels, kernels_pinned
from common.onnx_graph import save_model
from models.weights import cache_dir
from quantize import ccw, codec_sensitivity
from quantize.codec import (DAMP, DAMP_MAX, DAMP_MIN, LARGE_LAYER, REFITS, WIDTHS, Coded, Layer, allocate, apply,
                            code_layer, container_tensors, layers_of, widths_for)
from quantize.codec_sensitivity import PROBE_BITS, measure_sensitivity
from quantize.codec_stats import (SMALL_COLUMNS, InputMoments, collect_moments, conv_specs, load_moments,
                                  save_moments)

REPO_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "calib-photos"
MOMENTS_VERSION = 2  # 2: onnxruntime without its layout optimization (common.sessions.statistics_session)
CODEC_VERSION = 2  # bump when the coded table's meaning changes (keys the cache)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SENSITIVITY_PHOTOS = 4
# Layer sensitivities measured once and committed (the cache file, same name): its key is the int8 base's and the
# coded table's sha256 and the photos', so it applies exactly where those are the same bytes. The probes run
# onnxruntime's fused int8 kernels, which give other bits on CPUs without VNNI (AVX2's u8s8 kernel saturates);
# the committed measurement makes the allocation the same on every machine and saves the probes (~10 min for IS-Net).
MEASURED = Path(__file__).resolve().parent / "measured"
# The per-layer errors and sensitivities are rounded to this many significant digits before the allocation
# decides on them: their last bits follow the CPU's kernels (onnxruntime's, OpenBLAS's) and thread counts.
DECISION_DIGITS = 3


def significant(value: float, digits: int = DECISION_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant decimal digits (through its decimal text: exact, portable)."""
    return float(f"{value:.{digits - 1}e}")


@dataclass(frozen=True)
class CodecSettings:
    budget: float  # average bits per Conv weight (uncoded layers count 8)
    layout: str = "aligned"  # index storage: "aligned" (1/2/4/8 bits, for brotli) or "packed"
    damp: float = DAMP
    refits: int = REFITS
    keep_first_last: bool = True  # the first Conv (sees the image) and the last (the alpha head) stay int8
    # "layer": weight each layer's error by its measured effect on alpha (codec_sensitivity); "": unweighted
    sensitivity: str = "layer"


def codec_photos(build_photos: Sequence[Path]) -> list[Path]:
    """The photos whose conv inputs the codec measures: the repository's unlabelled calibration set
    (``REPO_PHOTOS``, data/calib-photos, when present) and the build's calibration photos, each once."""
    extra = REPO_PHOTOS
    repo = sorted(p for p in extra.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if extra and extra.is_dir() else []
    return list({p.resolve(): p for p in [*repo, *build_photos]}.values())


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def moments_for(fp32: Path, photos: Sequence[Path], load: Callable, specs, log) -> dict[str, InputMoments]:
    from quantize.codec_stats import MAX_POSITIONS, MIN_POSITIONS, PATCH_BUDGET
    key = _key("moments", MOMENTS_VERSION, sha256_file(fp32), [sha256_file(p) for p in photos], MAX_POSITIONS, MIN_POSITIONS,
               PATCH_BUDGET)
    folder = cache_dir() / "codec" / f"moments-{key}"
    if not (folder / "index.txt").is_file():
        start = time.perf_counter()
        moments = collect_moments(fp32, photos, load, specs, progress=lambda i, n, _: log(
            f"  codec: conv input moments {i}/{n} photos ({time.perf_counter() - start:.0f} s)"))
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_moments(moments, partial)
        partial.rename(folder)
        del moments
    return load_moments(folder)


def coded_table(layers: Sequence[Layer], moments: dict[str, InputMoments], int8: onnx.ModelProto, key: str,
                settings: CodecSettings, log) -> dict[str, dict[int, Coded]]:
    """Every layer at every width below 8 (cached as one .npz)."""
    path = cache_dir() / "codec" / f"table-{key}.npz"
    if path.is_file():
        return _load_table(path, layers)
    initializers = {i.name: i for i in int8.graph.initializer}
    table: dict[str, dict[int, Coded]] = {}
    start = time.perf_counter()
    for n, layer in enumerate(layers):
        q8 = numpy_helper.to_array(initializers[layer.qdq.weight]).reshape(layer.w.shape)
        bias_scale = (numpy_helper.to_array(initializers[layer.qdq.bias_scale]).astype(np.float64)
                      if layer.qdq.bias else None)
        # small layers: one BLAS thread (OpenBLAS threads cost more than they save on small matrices)
        with threadpool_limits(1 if layer.spec.columns < SMALL_COLUMNS else None, user_api="blas"):
            by_bits = table[layer.spec.node] = code_layer(layer, moments[layer.spec.weight], widths_for(layer.size),
                                                          q8, bias_scale, settings.damp, settings.refits)
        log(f"  codec: {n + 1}/{len(layers)} {layer.spec.node} {layer.w.shape} "
            + " ".join(f"{b}b {c.error:.1e}" for b, c in by_bits.items())
            + f" ({time.perf_counter() - start:.0f} s)")
    _save_table(path, table)
    return table


def _save_table(path: Path, table: dict[str, dict[int, Coded]]) -> None:
    arrays, meta = {}, {}
    for i, (node, by_bits) in enumerate(table.items()):
        meta[node] = {}
        for b, c in by_bits.items():
            arrays[f"{i}_{b}_q"] = c.q
            if c.bias_delta is not None:
                arrays[f"{i}_{b}_bias"] = c.bias_delta
            meta[node][b] = [i, c.error]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    partial.rename(path)


def _load_table(path: Path, layers: Sequence[Layer]) -> dict[str, dict[int, Coded]]:
    data = np.load(path)
    meta = json.loads(data["meta"].tobytes())
    table = {}
    for node, by_bits in meta.items():
        table[node] = {}
        for b, (i, error) in by_bits.items():
            bias = data[f"{i}_{b}_bias"] if f"{i}_{b}_bias" in data else None
            table[node][int(b)] = Coded(int(b), data[f"{i}_{b}_q"], bias, error)
    return table


def index_rate(q: np.ndarray, bits: int) -> float:
    """Bits per weight an entropy coder needs for ``q``'s palette indices (order-0 entropy over the tensor)."""
    if bits >= 8:
        return 8.0
    _, indices = ccw.row_palettes(q, bits)
    counts = np.bincount(indices.reshape(-1), minlength=1 << bits)
    # Python's scalar log2 and an exact sum: numpy's vectorised log2 differs between its SIMD targets
    total = int(indices.size)
    return math.fsum(-(c / total) * math.log2(c / total) for c in counts.tolist() if c > 0)


def code_graph(fp32: Path, int8_base: Path, target: Path, photos: Sequence[Path], load: Callable,
               settings: CodecSettings, log: Callable[[str], None] = print) -> dict:
    """Write the coded variant ``target`` and its container ``target.with_suffix('.ccw')``; returns what the
    build manifest records."""
    fp32_model = onnx.load(str(fp32))
    int8 = onnx.load(str(int8_base))
    layers = layers_of(fp32_model, int8)
    specs = [layer.spec for layer in layers]
    del fp32_model
    moments = moments_for(fp32, photos, load, specs, log)
    kernels = blas_kernels()
    if not kernels_pinned():
        log(f"  codec: WARNING: BLAS kernels {', '.join(kernels)}, not pinned to {PINNED_CORETYPE} (common/kernels.py): "
            "the coded bytes may differ from other machines'")
    key = _key("table", CODEC_VERSION, sha256_file(fp32), sha256_file(int8_base), [sha256_file(p) for p in photos],
               settings.damp, settings.refits, WIDTHS, LARGE_LAYER, DAMP_MIN, DAMP_MAX)
    table_key = _key(key, kernels)  # the table's arithmetic follows the BLAS kernels; the sensitivities' key does not
    table = coded_table(layers, moments, int8, table_key, settings, log)
    del moments
    sizes = {layer.spec.node: layer.size for layer in layers}
    errors = {node: {b: significant(c.error) for b, c in by_bits.items()} for node, by_bits in table.items()}
    fixed = {layers[0].spec.node: 8, layers[-1].spec.node: 8} if settings.keep_first_last else {}
    measured, origin = {}, None  # node → sensitivity
    if settings.sensitivity:
        measured, origin = sensitivity_for(int8, layers, table,
                                           _key(key, PROBE_BITS, settings.sensitivity, codec_sensitivity.UNFUSED),
                                           sensitivity_photos(photos), load, list(fixed), log)
    weight = {node: significant(measured.get(node, 1.0)) for node in sizes}
    rates = {}

    def rate(node: str, bits: int) -> float:
        if settings.layout == "packed":
            return float(bits)
        if (node, bits) not in rates:
            rates[node, bits] = significant(index_rate(table[node][bits].q, bits), 6)
        return rates[node, bits]

    allocation = allocate(sizes, errors, settings.budget, rate, sensitivity=weight, fixed=fixed)
    coded = {node: table[node][b] for node, b in allocation.bits.items()}
    model = apply(int8, layers, coded)
    save_model(model, target)
    onnx_bytes = target.read_bytes()
    container = ccw.encode(onnx_bytes, container_tensors(layers, allocation.bits, settings.layout))
    if ccw.decode(container) != onnx_bytes:
        raise RuntimeError(f"{target.name}: the .ccw container does not decode to the written ONNX")
    ccw_path = target.with_suffix(".ccw")
    atomic_write_bytes(ccw_path, container)
    return {
        "container": {"path": ccw_path.name, "sha256": sha256_file(ccw_path), "bytes": len(container),
                      "brotli_bytes": _brotli_size(container), **ccw.summary(container)},
        "allocation": {"average_bits": round(allocation.average_bits, 4),
                       "entropy_bits": round(sum(sizes[n] * rate(n, b) for n, b in allocation.bits.items())
                                             / sum(sizes.values()), 4),
                       "layers": {layer.spec.node: {"bits": allocation.bits[layer.spec.node],
                                                    "weights": layer.size,
                                                    "error": float(f"{coded[layer.spec.node].error:.4g}"),
                                                    "int8_error": float(f"{table[layer.spec.node][8].error:.4g}")}
                                  for layer in layers},
                       "sensitivity": {n: float(f"{v:.4g}") for n, v in measured.items()},
                       "sensitivity_origin": origin},
        "settings": asdict(settings),
        "blas": kernels,
    }


def sensitivity_photos(photos: Sequence[Path], count: int = SENSITIVITY_PHOTOS) -> list[Path]:
    """A few of the codec's photos, spread over the repository's calibration set when it is among them."""
    repo = [p for p in photos if REPO_PHOTOS is not None and p.parent.resolve() == REPO_PHOTOS.resolve()]
    pool = repo or list(photos)
    return pool[::max(1, len(pool) // count)][:count]


def sensitivity_for(int8: onnx.ModelProto, layers: Sequence[Layer], table: dict, key: str, photos: Sequence[Path],
                    load: Callable, skip: Sequence[str], log) -> tuple[dict[str, float], str]:
    """codec_sensitivity.measure_sensitivity, cached by the table's key and the photos; returns the
    sensitivities and where they came from: "measured" here, this machine's "cache", or the "repository"'s
    measurement (``MEASURED``: the same key, so the same int8 base, table and photos)."""
    name = f"sensitivity-{_key(key, [sha256_file(p) for p in photos], list(skip))}.json"
    for origin, path in (("cache", cache_dir() / "codec" / name), ("repository", MEASURED / name)):
        if path.is_file():
            log(f"  codec: layer sensitivities from the {origin} ({path})")
            return json.loads(path.read_text()), origin
    found = measure_sensitivity(int8, layers, table, [load(p) for p in photos], skip, PROBE_BITS, log)
    atomic_write_bytes(cache_dir() / "codec" / name, json.dumps(found, sort_keys=True).encode())
    return found, "measured"


def _brotli_size(data: bytes, quality: int = 9) -> int | None:
    try:
        import brotli
    except ImportError:
        return None
    return len(brotli.compress(data, quality=quality, lgwin=22))


# ---------------------------------------------------------------- the recipe

def int8_base(fp32: Path, target: Path, variant: str, int8_params: dict, make: Callable[[Path], None],
              log: Callable[[str], None]) -> tuple[Path, str]:
    """The static int8 graph the coded variant starts from: the build's own int8 variant file when the build
    manifest shows it was made from this fp32 graph with the same recipe parameters (``int8_params``: the
    calibration photos, the float head) and onnxruntime (and the file is intact), else made by ``make`` into a
    temporary file. Returns (path, "reused" | "made")."""
    from importlib.metadata import version

    sibling = target.with_name(target.name.replace(f".{variant}.", ".int8.", 1))
    manifest = target.parent / "manifest.json"
    if sibling != target and sibling.is_file() and manifest.is_file():
        stages = json.loads(manifest.read_text()).get("stages", {})
        for record in stages.values():
            out = record.get("outputs", {}).get("int8", {})
            if (out.get("path") == sibling.name and out.get("sha256") == sha256_file(sibling)
                    and record.get("inputs", {}).get("fp32") == sha256_file(fp32)
                    and record.get("params") == int8_params
                    and record.get("tools", {}).get("onnxruntime") == version("onnxruntime")):
                log(f"  codec: int8 base {sibling.name} (from this build)")
                return sibling, "reused"
    made = Path(tempfile.mkdtemp(prefix="clearcut-codec-")) / "int8.onnx"
    log("  codec: making the int8 base")
    make(made)
    return made, "made"


def make_coded_variant(fp32: Path, target: Path, variant: str, calibration, settings: CodecSettings,
                       int8_params: dict, log: Callable[[str], None] = print) -> dict:
    """The recipe: ``calibration`` (quantize.recipes.Calibration) sets the int8 base's activation ranges, as
    for the int8 variant; its photos plus data/calib-photos give the conv input statistics."""
    from common.contract import INPUT_NAME
    from quantize.static_int8 import to_int8_static

    base, how = int8_base(fp32, target, variant, int8_params,
                          lambda out: to_int8_static(fp32, out, calibration.images, calibration.load, INPUT_NAME), log)
    try:
        photos = codec_photos(calibration.images)
        result = code_graph(fp32, base, target, photos, calibration.load, settings, log)
    finally:
        if how == "made":
            shutil.rmtree(base.parent, ignore_errors=True)
    return {**result, "int8_base": how}
