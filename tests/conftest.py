from __future__ import annotations

from pathlib import Path

from common.kernels import pin_blas_kernels

pin_blas_kernels()  # before numpy loads OpenBLAS, as `clearcut` does (common/kernels.py)

import pytest  # noqa: E402
import torch

from models.architectures import build_model
from models.registry import get_model_config

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev"


@pytest.fixture(scope="session")
def tiny_u2netp_weights(tmp_path_factory) -> Path:
    """A random-init U^2-NetP checkpoint in upstream format (DataParallel ``module.`` prefix included)."""
    torch.manual_seed(0)
    model = build_model(get_model_config("u2netp"))
    path = tmp_path_factory.mktemp("weights") / "u2netp_random.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, tiny_u2netp_weights) -> Path:
    """`build/u2netp/` of that random-init U^2-NetP exported at 64 px (fp32, fp16), shared by the browser tests
    and `clearcut cut`'s (test modules with a build of their own override it)."""
    from eval.images import sample_photos
    from export.pipeline import ExportOptions, run_export

    # gated on the 6 scikit-image photos: a random-init fp16 misses fp16's real worst-photo bound on one of the
    # 29 gate photos, and these tests need the fp16 variant shipped
    root = tmp_path_factory.mktemp("tinybuild")
    run_export(ExportOptions(config=get_model_config("u2netp"), variants=["fp32", "fp16"], weights=tiny_u2netp_weights,
                             input_size=(64, 64), out_dir=root, latency_runs=1, parity_images=sample_photos(),
                             log=lambda *_: None))
    return root / "u2netp"


@pytest.fixture(scope="session")
def coded_build(tmp_path_factory, tiny_u2netp_weights):
    """fp32 + int8 + two coded budgets (int8p2, int8p3: `.ccw` containers beside their ONNX) of a random-init
    U^2-NetP at 64 px; the codec cut to widths 2, 3, 4 and no refit (speed), its statistics on the parity photos
    only. Exported twice (the second run's log shows what was skipped). Shared by tests/test_codec.py and the
    browser delivery tests: (build folder, export result, first log, second log)."""
    import dataclasses
    import functools

    from export.pipeline import ExportOptions, run_export
    from models.registry import ParityThresholds
    from quantize import codec, codec_build
    from quantize.recipes import ALL_VARIANTS

    loose = {v: ParityThresholds(max_abs=1e-4) if v == "fp32" else ParityThresholds(iou_mean=0.0) for v in ALL_VARIANTS}
    config = dataclasses.replace(get_model_config("u2netp"), thresholds=loose)
    out = tmp_path_factory.mktemp("coded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLEARCUT_CACHE", str(out / "cache"))
        patch.setattr(codec, "WIDTHS", (2, 3, 4, 8))
        patch.setattr(codec_build, "WIDTHS", (2, 3, 4, 8))
        patch.setattr(codec_build, "REPO_PHOTOS", None)
        patch.setattr(codec_build, "CodecSettings", functools.partial(codec_build.CodecSettings, refits=0))
        logs: list[str] = []
        options = ExportOptions(config=config, variants=["fp32", "int8", "int8p2", "int8p3"],
                                weights=tiny_u2netp_weights, input_size=(64, 64), out_dir=out, latency_runs=1,
                                log=logs.append)
        data = run_export(options)
        again: list[str] = []
        run_export(dataclasses.replace(options, log=again.append))
    return out / "u2netp", data, logs, again


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("CLEARCUT_CACHE", str(directory))
    return directory


@pytest.fixture(scope="session")
def birefnet_tiny(tmp_path_factory):
    """A test-only registry entry ``birefnet-tiny`` (BiRefNet graph, small widths; rmbg-2.0's preprocessing,
    output and fp16/int8w settings) and an upstream-format checkpoint of random weights for it.

    Gate thresholds a random-init model can meet: its logits sit near 0, so IoU@0.5 says little; the
    gate's mechanics are what is tested. Offsets are small random numbers so that deformable sampling moves.
    """
    import dataclasses

    from safetensors.torch import save_file

    from models.registry import REGISTRY, ParityThresholds
    from quantize.recipes import ALL_VARIANTS

    loose = {v: ParityThresholds(max_abs=1e-4) if v == "fp32" else ParityThresholds(iou_mean=0.0) for v in ALL_VARIANTS}
    config = dataclasses.replace(REGISTRY["rmbg-2.0"], name="birefnet-tiny", architecture="birefnet-tiny",
                                 thresholds=loose, description="BiRefNet, tiny test configuration")
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "offset_conv" in name or "modulator_conv" in name:
                param.normal_(std=0.02)
    path = tmp_path_factory.mktemp("birefnet") / "birefnet_tiny.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    REGISTRY[config.name] = config
    yield config, path
    REGISTRY.pop(config.name, None)


# One Playwright driver per test session: a second sync_playwright() inside a running one fails, so every test
# that drives Chromium (tests/browser, publish) shares these.
@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance):
    from common.chromium import launch

    browser = launch(playwright_instance)
    yield browser
    browser.close()
