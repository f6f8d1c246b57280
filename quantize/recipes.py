"""Variant recipes: how each shipped variant is made from the fp32 graph, by name.

A new variant kind (another quantizer, a weight codec, another engine's format) is one more ``Recipe`` here;
the export pipeline builds a step per recipe and graph without knowing what the recipe does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.contract import INPUT_NAME
from models.registry import CODED_VARIANTS, ModelConfig

BASE_VARIANT = "fp32"  # exported from torch; every recipe starts from it

# A calibration photo → the graph's inputs by name (the preprocessed image, or what earlier graphs made of it).
CalibrationLoader = Callable[[Path], "dict[str, np.ndarray]"]


@dataclass(frozen=True)
class Calibration:
    """Photos a calibrated recipe feeds through the graph, and how a photo becomes the graph's inputs."""

    images: Sequence[Path]
    load: CalibrationLoader
    fingerprint: dict[str, str]  # photo name → sha256, recorded with the step


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    make: Callable[[Path, Path, ModelConfig, Calibration], None]  # (source graph, target, config, calibration)
    params: Callable[[ModelConfig, Calibration], dict]  # what the build manifest records (and keys the step on)
    source: str = BASE_VARIANT  # the variant whose graph the recipe starts from


def _fp16(fp32: Path, target: Path, config: ModelConfig, _: Calibration) -> None:
    from quantize.fp16 import to_fp16
    to_fp16(fp32, target, config.fp16_keep_fp32)


def _int8_weights(fp32: Path, target: Path, config: ModelConfig, _: Calibration) -> None:
    from quantize.weight_only import to_int8_weights
    to_int8_weights(fp32, target, config.int8w_keep_fp16)


def _int8_params(_: ModelConfig, calibration: Calibration) -> dict:
    return {"calibration": dict(calibration.fingerprint), "head": "float", "input": "float"}


def _int8_static(fp32: Path, target: Path, _: ModelConfig, calibration: Calibration) -> None:
    from quantize.static_int8 import to_int8_static
    to_int8_static(fp32, target, calibration.images, calibration.load, INPUT_NAME)


def _quint8_dynamic(fp32: Path, target: Path, _: ModelConfig, __: Calibration) -> None:
    from quantize.static_int8 import to_quint8_dynamic
    to_quint8_dynamic(fp32, target)


def coded_recipe(name: str, budget: float) -> Recipe:
    """The int8 QDQ graph with its conv weights on per-row palettes below 8 bits, ``budget`` entropy-coded bits
    per weight on average (quantize/codec.py). The variant file is the decoded graph; its ``.ccw`` container
    (what the bundle ships) is written beside it and recorded in the step's result."""
    def make(fp32: Path, target: Path, config: ModelConfig, calibration: Calibration) -> dict:
        from quantize.codec_build import CodecSettings, make_coded_variant
        return make_coded_variant(fp32, target, name, calibration, CodecSettings(budget),
                                  int8_params=_int8_params(config, calibration))

    def params(config: ModelConfig, calibration: Calibration) -> dict:
        from common.files import file_hashes
        from quantize.codec_build import CODEC_VERSION, CodecSettings, codec_photos
        # the int8 base's params (its calibration, float input and head): a change to them remakes the base
        return {"int8": _int8_params(config, calibration),
                "codec_version": CODEC_VERSION, "codec_photos": file_hashes(codec_photos(calibration.images)),
                **vars(CodecSettings(budget))}

    return Recipe(name, f"int8 QDQ, conv weights on per-row palettes of {budget:g} bits per weight on average "
                        "(error-compensating rounding, per-layer widths); .ccw container beside it", make, params)


def webgpu_graph_recipe(variant: str) -> Recipe:
    """The graph WebGPU runs for ``variant`` (an int8 QDQ graph): the same int8 weights and their
    DequantizeLinear nodes, float activations (quantize/engine_graphs.py). Shipped inside the variant's `.ccw`
    container beside the WASM graph, on the same coded weights."""
    def make(source: Path, target: Path, _: ModelConfig, __: Calibration) -> None:
        from quantize.engine_graphs import to_float_activations
        to_float_activations(source, target)

    return Recipe(engine_graph_name(variant, "webgpu"),
                  f"{variant}'s int8 weights + DequantizeLinear, float activations: the graph WebGPU runs wholly on the GPU",
                  make, lambda _, __: {"engine": "webgpu", "activations": "float", "relu": "restored"}, source=variant)


def engine_graph_name(variant: str, engine: str) -> str:
    return f"{variant}-{engine}"


RECIPES: dict[str, Recipe] = {}
# Engine graphs: per shipped variant and engine (other than WASM, which runs the variant's own graph), the recipe
# of the graph that engine runs. Built and gated with the variant; not variants of their own.
ENGINE_GRAPHS: dict[str, dict[str, Recipe]] = {name: {"webgpu": webgpu_graph_recipe(name)} for name in CODED_VARIANTS}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES or recipe.name == BASE_VARIANT:
        raise ValueError(f"variant recipe {recipe.name!r} registered twice")
    RECIPES[recipe.name] = recipe
    return recipe


register_recipe(Recipe(
    "fp16", "fp16 weights and compute, fp32 input/output (onnxconverter-common)", _fp16,
    lambda config, _: {"keep_fp32_ops": list(config.fp16_keep_fp32)} if config.fp16_keep_fp32 else {}))
register_recipe(Recipe(
    "int8w", "weight-only int8, per-output-channel scales, fp32 compute", _int8_weights,
    lambda config, _: {"keep_fp16": list(config.int8w_keep_fp16)}))
register_recipe(Recipe(
    "int8", "static int8 QDQ: per-channel weights, entropy-calibrated activations, float input and head", _int8_static,
    _int8_params))
for _name, _budget in CODED_VARIANTS.items():
    register_recipe(coded_recipe(_name, _budget))
register_recipe(Recipe(
    "quint8", "dynamic quint8 weights (imgly's 'small' recipe), a comparison row", _quint8_dynamic,
    lambda _, __: {}))

ALL_VARIANTS: tuple[str, ...] = (BASE_VARIANT, *RECIPES)


def get_recipe(name: str) -> Recipe:
    engine_graphs = {r.name: r for graphs in ENGINE_GRAPHS.values() for r in graphs.values()}
    try:
        return RECIPES[name] if name in RECIPES else engine_graphs[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(ALL_VARIANTS)}") from None
