"""The weight codec once on the real default model (IS-Net, npm weights as in test_real_weights): int8 → coded
int8p3 → `.ccw` container → decoded back to the exact ONNX bytes the build gated, a third of int8's brotli bytes,
and the decoded graph still finds the subject. At 512² on two photos, the codec's widths cut to 3 and 8 and no
refit, its statistics in a private cache: minutes, not the ~40 of a full `make export`."""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pytest

from common.files import sha256_file
from common.sessions import cpu_session
from eval.images import alpha_to_image_size, calibration_photos, load_rgb, preprocess, sample_photos
from eval.parity import iou_at
from export.pipeline import ExportOptions, run_export
from models.registry import DEFAULT_MODEL, ParityThresholds, get_model_config
from models.weights import pull
from quantize import ccw, codec, codec_build

SIZE = 512


@pytest.fixture(scope="module")
def real_coded(tmp_path_factory):
    config = get_model_config(DEFAULT_MODEL)
    weights = pull(config, progress=False)  # the user's cache, shared with test_real_weights
    # at 512² the gate's IoU is not the product's (the registry's size is 1024²): recorded, not enforced here
    config = dataclasses.replace(config, thresholds={**config.thresholds, **{v: ParityThresholds(iou_mean=0.0)
                                                                           for v in ("int8", "int8p3")}})
    photos = [p for p in sample_photos() if p.name in ("astronaut.png", "rocket.jpg")]
    out = tmp_path_factory.mktemp("real-coded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLEARCUT_CACHE", str(out / "cache"))
        patch.setattr(codec, "WIDTHS", (3, 8))
        patch.setattr(codec_build, "WIDTHS", (3, 8))
        patch.setattr(codec_build, "REPO_PHOTOS", None)
        patch.setattr(codec_build, "CodecSettings", functools.partial(codec_build.CodecSettings, refits=0,
                                                                          sensitivity=""))
        data = run_export(ExportOptions(config=config, variants=["fp32", "int8", "int8p3"], weights=weights,
                                        input_size=(SIZE, SIZE), out_dir=out, parity_images=photos,
                                        calibration_images=calibration_photos(2), wasm_gate=False,
                                        latency_runs=1, log=lambda *_: None))
    return out / DEFAULT_MODEL, data


def test_the_container_decodes_to_the_gated_graph(real_coded):
    build, data = real_coded
    variant, record = data["variants"]["int8p3"], data["stages"]["variant:int8p3"]["result"]["container"]
    container = build / record["path"]
    assert sha256_file(container) == record["sha256"]
    assert sha256_file(build / variant["path"]) == variant["sha256"]
    assert hashlib.sha256(ccw.decode(container.read_bytes())).hexdigest() == variant["sha256"]


def test_the_container_is_a_fraction_of_int8(real_coded):
    build, data = real_coded
    result = data["stages"]["variant:int8p3"]["result"]
    brotli = pytest.importorskip("brotli")
    int8 = brotli.compress((build / data["variants"]["int8"]["path"]).read_bytes(), quality=5, lgwin=22)
    assert result["container"]["brotli_bytes"] < 0.5 * len(int8), (result["container"], len(int8))
    assert result["allocation"]["entropy_bits"] <= 3.0 + 1e-6  # the budget, in entropy-coded bits per conv weight


def test_the_coded_graph_cuts_like_fp32(real_coded):
    """The decoded graph runs and keeps fp32's cut of the astronaut (at this size, fp32 is the reference)."""
    build, data = real_coded
    pre = dataclasses.replace(get_model_config(DEFAULT_MODEL).preprocessing, input_size=(SIZE, SIZE))
    rgb = load_rgb(next(p for p in sample_photos() if p.name == "astronaut.png"))
    alphas = {}
    for variant in ("fp32", "int8p3"):
        session = cpu_session(build / data["variants"][variant]["path"])
        alphas[variant] = alpha_to_image_size(session.run(None, {"input": preprocess(rgb, pre)})[0][0, 0],
                                              rgb.shape[:2])
    # measured: IoU 0.963, mean |Δalpha| 0.020 (int8 alone 0.991 / 0.004) at 512² on two calibration photos with
    # widths 3/8 only (the shipped variant: 1024², 46 photos, widths 2–8, IoU 0.9997 on this photo); a broken
    # codec or decode lands far off
    assert iou_at(alphas["int8p3"], alphas["fp32"]) >= 0.9
    assert np.abs(alphas["int8p3"] - alphas["fp32"]).mean() <= 0.05


def test_the_webgpu_graph_runs_wholly_on_the_gpu_and_sits_closer_to_fp32(real_coded):
    """The real model's WebGPU graph of the coded variant (same int8 weights, float activations): Chromium's WebGPU
    engine places every node on the GPU (a session with CPU fallback disabled), the container carries it beside
    the WASM graph, and with float activations it is nearer the torch reference than the int8 graph."""
    build, data = real_coded
    engine = data["variants"]["int8p3"]["engines"]["webgpu"]
    assert engine["placement"]["all_on_webgpu"], engine["placement"]
    assert engine["passed"] and engine["session_config"] == {}  # dequantized on the GPU: the WASM heap keeps int8
    container = (build / data["variants"]["int8p3"]["engines_container"]["path"]).read_bytes()
    assert hashlib.sha256(ccw.decode(container, "webgpu")).hexdigest() == engine["sha256"]
    assert hashlib.sha256(ccw.decode(container)).hexdigest() == data["variants"]["int8p3"]["sha256"]
    assert engine["parity"]["mean_abs"] < data["variants"]["int8p3"]["parity"]["mean_abs"], (engine["parity"],
                                                                                            data["variants"]["int8p3"]["parity"])
