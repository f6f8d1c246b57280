"""The bundle manifest (`dist/manifest.json`) as one declared contract.

`web_runtime.build_bundle` builds these objects and writes them with ``to_json``; readers (the bundle's own
checks, `clearcut cut --bundle`, tests) parse with ``parse_bundle_manifest``, which names the first field that
does not fit. `web_runtime/src/manifest.d.ts` declares the same interfaces for the JS runtime; a test keeps
the two in step (field names and which fields may be absent).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from common.contract import BUNDLE_SCHEMA

# Fields that are left out of the JSON when they are None (a variant has either chunks or stages; `coded` only
# when its chunks are a weight container).
OMIT_IF_NONE = {"omit_if_none": True}


class ManifestError(ValueError):
    """A manifest that does not fit the contract."""


@dataclass(frozen=True)
class Chunk:
    path: str  # relative to the manifest's URL: chunks/<sha256>.bin
    sha256: str
    bytes: int
    integrity: str  # subresource-integrity form (sha384-…)


@dataclass(frozen=True)
class Parity:
    max_abs: float
    mean_abs: float
    iou_mean: float
    iou_worst: float
    worst_image: str
    passed: bool


@dataclass(frozen=True)
class Stage:
    """One graph of a variant shipped as browser stages, run in order, one session at a time."""

    name: str
    bytes: int
    sha256: str
    inputs: list[str]
    outputs: list[str]
    session_config: dict[str, str]
    chunks: list[Chunk]


@dataclass(frozen=True)
class Coded:
    """A variant shipped as a weight container (quantize/ccw.py): its `chunks` are the container's, which the
    runtime decodes into the variant's ONNX bytes (`Variant.bytes`, `Variant.sha256`) before the session."""

    format: str  # "ccw1"
    bytes: int  # of the container
    sha256: str  # of the container


CODED_FORMATS = ("ccw1",)


@dataclass(frozen=True)
class Probe:
    """An engine graph's expected alpha on the probe input (common/probe.py): the runtime compares the engine's
    result with it before it trusts the engine."""

    version: int
    cells: int  # the alpha pooled to cells × cells means
    expected: str  # base64 of cells² bytes, round(255 · mean)
    tolerance: float  # the largest mean abs difference accepted


@dataclass(frozen=True)
class EngineGraph:
    """The graph one engine runs for a variant instead of the variant's own (e.g. WebGPU's float-activation
    graph of a coded variant): decoded from the same container (`graph` names it there)."""

    graph: str
    bytes: int
    sha256: str
    session_config: dict[str, str]
    webgpu_features: list[str]
    probe: Probe


@dataclass(frozen=True)
class Variant:
    bytes: int  # of the ONNX file (decoded, for a coded variant)
    sha256: str | None = field(default=None, metadata=OMIT_IF_NONE)  # absent for staged variants
    gzip_bytes: int | None = None
    parity: Parity | None = None
    cpu_latency_ms: float | None = None
    backends: list[str] = field(default_factory=list)
    session_config: dict[str, str] | None = field(default=None, metadata=OMIT_IF_NONE)
    webgpu_features: list[str] = field(default_factory=list)
    chunks: list[Chunk] | None = field(default=None, metadata=OMIT_IF_NONE)  # one graph
    stages: list[Stage] | None = field(default=None, metadata=OMIT_IF_NONE)  # or graphs run in sequence
    coded: Coded | None = field(default=None, metadata=OMIT_IF_NONE)  # chunks are a weight container
    engines: dict[str, EngineGraph] | None = field(default=None, metadata=OMIT_IF_NONE)  # engine → its own graph

    def __post_init__(self):
        if (self.chunks is None) == (self.stages is None):
            raise ManifestError("a variant lists either chunks (one graph) or stages (graphs run in sequence)")
        if self.coded is not None:
            if self.chunks is None or self.sha256 is None:
                raise ManifestError("a coded variant lists its container's chunks and the decoded graph's sha256")
            if self.coded.format not in CODED_FORMATS:
                raise ManifestError(f"coded.format {self.coded.format!r} is not one of {list(CODED_FORMATS)}")
        if self.engines is not None and self.coded is None:
            raise ManifestError("engine graphs travel in a coded variant's container")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    description: str
    licence: str
    licence_note: str


@dataclass(frozen=True)
class Preprocessing:
    input_size: list[int]  # [height, width]
    mean: list[float]
    std: list[float]
    scale: Union[float, str]  # 255 or "max"
    resize: str
    channel_order: str
    layout: str


@dataclass(frozen=True)
class OutputSpec:
    select: list[int]
    sigmoid_in_model: bool
    minmax_normalize: bool
    range: list[float]
    input_name: str
    output_name: str


@dataclass(frozen=True)
class RuntimeFiles:
    module: str
    worker: str
    ort: dict[str, str]  # backend → onnxruntime-web entry module
    ort_dir: str
    # the ZIP writer (fflate's browser build) the demo page streams "Download all" with; bundles before it lack it
    zip: str | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str
    integrity: str


@dataclass(frozen=True)
class BundleManifest:
    schema: str
    model: ModelInfo
    preprocessing: Preprocessing
    output: OutputSpec
    refine: dict[str, Any]  # web_runtime/refine.json, as is
    variants: dict[str, Variant]
    default_variant: str
    runtime: RuntimeFiles
    files: dict[str, FileEntry]
    versions: dict[str, Any]
    source: dict[str, Any]

    def __post_init__(self):
        if self.schema != BUNDLE_SCHEMA:
            raise ManifestError(f"schema {self.schema!r} is not {BUNDLE_SCHEMA!r}")
        if self.default_variant not in self.variants:
            raise ManifestError(f"default_variant {self.default_variant!r} is not among {sorted(self.variants)}")


def to_json(value: Any) -> Any:
    """Plain JSON data of a contract object, fields in declaration order."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def parse(cls: Any, data: Any, where: str = "manifest") -> Any:
    """``data`` (parsed JSON) as ``cls``, checked field by field; ManifestError names the first misfit."""
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if cls is Any:
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return parse(option, data, where)
            except ManifestError as err:
                errors.append(str(err))
        raise ManifestError(errors[0] if len(errors) == 1 else f"{where}: {data!r} fits none of {args}")
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = parse(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where}: missing field {f.name!r}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls(**values)
        except ManifestError as err:
            raise ManifestError(f"{where}: {err}") from None
    if origin is list:
        if not isinstance(data, list):
            raise ManifestError(f"{where}: expected a list, got {type(data).__name__}")
        return [parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
        return {k: parse(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if cls is float and isinstance(data, (int, float)) and not isinstance(data, bool):
        return data
    if isinstance(data, cls) and not (cls is int and isinstance(data, bool)):
        return data
    raise ManifestError(f"{where}: expected {cls.__name__}, got {type(data).__name__} {data!r:.60}")


def parse_bundle_manifest(text_or_data: str | dict, source: str = "manifest.json") -> BundleManifest:
    data = json.loads(text_or_data) if isinstance(text_or_data, str) else text_or_data
    return parse(BundleManifest, data, source)
