"""The whole export pipeline on a small model (random-init U^2-NetP, 64 px) through every variant (the coded
ones: tests/test_codec.py)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

from eval.images import calibration_photos, gate_photos, load_rgb, preprocess, sample_photos
from eval.parity import ParityGateError
from common.onnx_graph import get_metadata
from export.pipeline import ExportOptions, run_export
from common.sessions import cpu_session
from models.registry import CODED_VARIANTS, ParityThresholds, get_model_config
from quantize.recipes import ALL_VARIANTS

SIZE = 64
# Every variant kind but the coded ones (int8p*: the int8 graph with coded weights), which tests/test_codec.py
# builds through this pipeline with a faster codec setting.
VARIANTS = [v for v in ALL_VARIANTS if v not in CODED_VARIANTS]


@pytest.fixture(scope="module")
def loose_u2netp():
    """U^2-NetP with gate thresholds a random-init model can meet: its near-constant output sits close to
    0.5 after min-max normalisation, so IoU@0.5 says little; the gate's mechanics are what is tested."""
    loose = {v: ParityThresholds(max_abs=1e-4) if v == "fp32" else ParityThresholds(iou_mean=0.0) for v in ALL_VARIANTS}
    return dataclasses.replace(get_model_config("u2netp"), thresholds=loose)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory, tiny_u2netp_weights, loose_u2netp):
    out = tmp_path_factory.mktemp("build")
    logs: list[str] = []
    options = ExportOptions(config=loose_u2netp, variants=VARIANTS, weights=tiny_u2netp_weights,
                            input_size=(SIZE, SIZE), out_dir=out, latency_runs=1, log=logs.append)
    data = run_export(options)
    return out / "u2netp", data, options, logs


def test_every_variant_is_written_with_numbers(tiny_build):
    build, data, _, _ = tiny_build
    assert data["gate"]["passed"]
    for variant in VARIANTS:
        info = data["variants"][variant]
        path = build / info["path"]
        assert path.exists() and path.stat().st_size == info["bytes"]
        assert 0 < info["gzip_bytes"] < info["bytes"] * 1.01
        assert 0.0 <= info["parity"]["iou_worst"] <= info["parity"]["iou_mean"] <= 1.0
        assert info["cpu_latency_ms"] > 0
    sizes = {v: data["variants"][v]["bytes"] for v in VARIANTS}
    # int8w keeps the full-resolution stages in fp16 (registry), a fifth of U^2-NetP's convs
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8w"] < 0.4 * sizes["fp32"]
    assert data["variants"]["fp32"]["parity"]["max_abs"] < 1e-4
    parity = json.loads((build / "parity.json").read_text())
    assert set(parity) == set(VARIANTS) and len(parity["fp32"]["images"]) == len(gate_photos()) >= 24


def test_manifest_and_metadata_carry_the_registry(tiny_build):
    build, data, _, _ = tiny_build
    config = get_model_config("u2netp")
    expected = dict(config.preprocessing.to_dict(), input_size=[SIZE, SIZE])
    assert data["preprocessing"] == expected
    assert data["model"]["licence"] == config.licence and data["source"]["origin"] == "user-supplied"
    assert {"import", "export", "variant:int8", "parity:fp16"} <= set(data["stages"])
    for variant in VARIANTS:
        meta = get_metadata(build / f"u2netp.{variant}.onnx")
        assert meta["preprocessing"] == expected and meta["output"]["minmax_normalize"] is True


def test_graph_is_browser_ready(tiny_build):
    build, _, _, _ = tiny_build
    model = onnx.load(str(build / "u2netp.fp32.onnx"))
    assert [o.name for o in model.graph.output] == ["alpha"] and [i.name for i in model.graph.input] == ["input"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, SIZE, SIZE]
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    for node in model.graph.node:
        attrs = {a.name for a in node.attribute}
        if node.op_type == "Conv":
            assert {"kernel_shape", "strides", "pads", "dilations", "group"} <= attrs, node.name
        if node.op_type == "MaxPool":
            assert not onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "ceil_mode"))
    assert model.opset_import[0].version >= 17


def test_fp16_keeps_fp32_io(tiny_build):
    build, _, _, _ = tiny_build
    session = cpu_session(build / "u2netp.fp16.onnx")
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    x = preprocess(load_rgb(sample_photos()[0]), get_model_config("u2netp").preprocessing.__class__(
        **{**get_model_config("u2netp").preprocessing.__dict__, "input_size": (SIZE, SIZE)}))
    alpha = session.run(None, {"input": x})[0]
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1


def test_rerun_skips_and_export_is_deterministic(tiny_build, tmp_path):
    build, data, options, _ = tiny_build
    logs: list[str] = []
    again = run_export(dataclasses.replace(options, log=logs.append))
    assert any("[export] unchanged, skipped" in line for line in logs)
    assert not any(line.endswith("running") for line in logs)
    assert again["variants"]["fp32"]["sha256"] == data["variants"]["fp32"]["sha256"]
    fresh = run_export(dataclasses.replace(options, out_dir=tmp_path, variants=["fp32", "fp16", "int8w"],
                                           log=lambda _: None))
    for variant in ("fp32", "fp16", "int8w"):
        assert fresh["variants"][variant]["sha256"] == data["variants"][variant]["sha256"], variant


def test_a_failed_variant_fails_alone(tiny_u2netp_weights, tmp_path, loose_u2netp):
    """A variant below its gate is reported (name, numbers, worst photos) and left out of dist/; the export still
    succeeds while the bundle's default order has a passing variant. STRICT (--strict) makes it an error."""
    from web_runtime.build_bundle import build_bundle

    strict = dataclasses.replace(loose_u2netp, thresholds={**loose_u2netp.thresholds,
                                                           "int8w": ParityThresholds(iou_mean=1.01)})
    logs: list[str] = []
    options = ExportOptions(config=strict, variants=["fp32", "int8w"], weights=tiny_u2netp_weights,
                            input_size=(SIZE, SIZE), out_dir=tmp_path, latency_runs=1, log=logs.append)
    data = run_export(options)
    assert data["gate"]["passed"] is False and data["gate"]["failed_variants"] == ["int8w"]
    assert "int8w (wasm): iou_mean" in data["gate"]["failures"][0]
    banner = "\n".join(logs)
    assert "FAILED and are left out of dist/" in banner and "int8w worst photos (wasm):" in banner
    bundle = build_bundle(tmp_path / "u2netp", tmp_path / "dist")
    assert set(bundle["variants"]) == {"fp32"} and bundle["default_variant"] == "fp32"
    with pytest.raises(ParityGateError, match=r"int8w \(wasm\): iou_mean = [0-9.]+ < 1.01"):
        run_export(dataclasses.replace(options, strict=True, log=lambda _: None))
    manifest = json.loads((tmp_path / "u2netp" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] is False and "int8w" in manifest["gate"]["failures"][0]


def test_no_passing_variant_in_the_default_order_fails(tiny_u2netp_weights, tmp_path, loose_u2netp):
    failing = dataclasses.replace(loose_u2netp, thresholds={**loose_u2netp.thresholds,
                                                            "fp32": ParityThresholds(max_abs=-1.0)})
    with pytest.raises(ParityGateError, match="no variant of the bundle's default order"):
        run_export(ExportOptions(config=failing, variants=["fp32"], weights=tiny_u2netp_weights, wasm_gate=False,
                                 input_size=(SIZE, SIZE), out_dir=tmp_path, latency_runs=1, log=lambda _: None))


def test_gate_photos_are_disjoint_from_calibration(tiny_u2netp_weights, tmp_path, loose_u2netp):
    """The default gate photos (>= 24, several kinds) share none with the calibration photos, the manifest lists
    both sets by sha256, and a gate photo that also calibrates is refused."""
    data = run_export(ExportOptions(config=loose_u2netp, variants=["fp32"], weights=tiny_u2netp_weights,
                                    wasm_gate=False, input_size=(SIZE, SIZE), out_dir=tmp_path, latency_runs=1,
                                    log=lambda _: None))
    sets = data["photo_sets"]
    assert len(sets["gate"]) == len(gate_photos()) >= 24 and len(sets["int8_calibration"]) == len(calibration_photos())
    assert not set(sets["gate"].values()) & set(sets["int8_calibration"].values())
    shared = [gate_photos()[0], calibration_photos()[0]]
    with pytest.raises(ValueError, match="must not calibrate or code a variant; shared: astronaut.png"):
        run_export(ExportOptions(config=loose_u2netp, variants=["fp32", "int8"], weights=tiny_u2netp_weights,
                                 parity_images=shared, calibration_images=shared, out_dir=tmp_path / "x",
                                 log=lambda _: None))


def test_the_default_must_clear_the_gate_by_the_margin():
    """The bundle defaults to the first variant of the order that passed by more than the registry's margin."""
    from web_runtime.build_bundle import default_variant

    entries = {"int8p2_68": {"gate": {"clear": False}}, "int8p3_5": {"gate": {"clear": True}}, "int8": {}}
    assert default_variant(entries, "isnet-imgly") == "int8p3_5"
    entries["int8p3_5"]["gate"]["clear"] = False
    assert default_variant(entries, "isnet-imgly") == "int8"
    limits = ParityThresholds(iou_mean=0.99, mean_abs=0.006).tightened(ParityThresholds(iou_mean=0.002, mean_abs=0.001))
    assert limits.iou_mean == pytest.approx(0.992) and limits.mean_abs == pytest.approx(0.005) and limits.max_abs is None


def test_unknown_variant_and_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        run_export(ExportOptions(config=get_model_config("u2netp"), variants=["int4"], out_dir=tmp_path))
    with pytest.raises(KeyError, match="known models"):
        get_model_config("nope")
