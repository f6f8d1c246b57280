"""A coded variant's bytes do not depend on thread counts: the same coded variant of a random-init U^2-NetP at
64 px, built twice from one fp32 graph (1 and 2 onnxruntime intra-op and BLAS threads, each build with its own
cache so that the second recomputes every statistic), has the same ONNX and .ccw bytes.

Across CPUs (AVX2 vs AVX-512 kernels) see bench/reproduce.py, which builds the same variant under qemu-user as a
Haswell (OpenBLAS pinned to its Haswell kernels everywhere: common/kernels.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

SIZE = 64


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory, tiny_u2netp_weights):
    from eval.images import sample_photos
    from export.pipeline import ExportOptions, run_export
    from models.registry import ParityThresholds, get_model_config
    from quantize.recipes import ALL_VARIANTS

    root = tmp_path_factory.mktemp("reproducible")
    photos = root / "photos"
    photos.mkdir()
    copied = [Path(shutil.copy(p, photos / p.name)) for p in sample_photos()]
    calibration, parity = copied[:3], copied[3:5]
    loose = {v: ParityThresholds(max_abs=1e-4) if v == "fp32" else ParityThresholds(iou_mean=0.0) for v in ALL_VARIANTS}
    config = dataclasses.replace(get_model_config("u2netp"), thresholds=loose)
    run_export(ExportOptions(config=config, variants=["fp32"], weights=tiny_u2netp_weights, input_size=(SIZE, SIZE),
                             out_dir=root / "build", parity_images=parity, calibration_images=calibration,
                             wasm_gate=False, browser_stages=False, latency_runs=1, log=lambda *_: None))
    return root, root / "build" / "u2netp" / "u2netp.fp32.onnx", calibration, config


def _build(root: Path, fp32: Path, photos: list[Path], config, threads: int, monkeypatch, label: str = "") -> dict[str, str]:
    from threadpoolctl import threadpool_limits

    from common.contract import INPUT_NAME
    from common.files import file_hashes
    from eval.images import load_rgb, preprocess
    from quantize import codec, codec_build
    from quantize.recipes import Calibration

    out = root / (label or f"threads-{threads}")
    monkeypatch.setenv("CLEARCUT_CACHE", str(out / "cache"))  # a private cache: every statistic recomputed
    monkeypatch.setenv("CLEARCUT_THREADS", str(threads))  # onnxruntime intra-op threads
    monkeypatch.setattr(codec, "WIDTHS", (2, 3, 4, 8))
    monkeypatch.setattr(codec_build, "WIDTHS", (2, 3, 4, 8))
    monkeypatch.setattr(codec_build, "REPO_PHOTOS", None)
    pre = dataclasses.replace(config.preprocessing, input_size=(SIZE, SIZE))

    def load(path: Path) -> dict:
        return {INPUT_NAME: preprocess(load_rgb(path), pre)}

    target = out / "u2netp.int8p3.onnx"
    target.parent.mkdir(parents=True)
    with threadpool_limits(threads, user_api="blas"):
        result = codec_build.make_coded_variant(fp32, target, "int8p3", Calibration(photos, load, file_hashes(photos)),
                                                codec_build.CodecSettings(3.0, refits=1), int8_params={},
                                                log=lambda *_: None)
    assert result["int8_base"] == "made"
    assert any(b < 8 for b in (v["bits"] for v in result["allocation"]["layers"].values()))
    return {"onnx": _sha(target), "ccw": _sha(target.with_suffix(".ccw")),
            "bits": str(sorted((n, v["bits"]) for n, v in result["allocation"]["layers"].items())),
            "origin": result["allocation"]["sensitivity_origin"], "cache": str(out / "cache")}


def test_coded_variant_bytes_do_not_depend_on_thread_counts(fp32_graph, monkeypatch):
    from common.kernels import PINNED_CORETYPE, blas_kernels, kernels_pinned

    # tests/conftest.py pins OpenBLAS's kernels as `clearcut` does: the arithmetic of every x86-64 CPU with AVX2
    assert kernels_pinned(), f"BLAS kernels {blas_kernels()}, expected {PINNED_CORETYPE}"
    root, fp32, photos, config = fp32_graph
    one = _build(root, fp32, photos, config, 1, monkeypatch)
    two = _build(root, fp32, photos, config, 2, monkeypatch)
    assert one["bits"] == two["bits"]
    assert one["onnx"] == two["onnx"]
    assert one["ccw"] == two["ccw"]


def test_committed_sensitivities_are_used_and_give_the_same_bytes(fp32_graph, monkeypatch, tmp_path):
    """A sensitivity measurement committed under quantize/measured/ (the cache file, same name) replaces the
    probes on a machine with an empty cache: no probe runs, and the bytes are those of the measuring build."""
    from quantize import codec_build

    root, fp32, photos, config = fp32_graph
    measuring = _build(root, fp32, photos, config, 2, monkeypatch, label="measuring")
    assert measuring["origin"] == "measured"
    committed = tmp_path / "measured"
    committed.mkdir()
    for found in Path(measuring["cache"]).glob("codec/sensitivity-*.json"):
        shutil.copy(found, committed / found.name)
    assert any(committed.iterdir())
    monkeypatch.setattr(codec_build, "MEASURED", committed)

    def no_probes(*_, **__):
        raise AssertionError("the committed sensitivities should have been used")

    monkeypatch.setattr(codec_build, "measure_sensitivity", no_probes)
    using = _build(root, fp32, photos, config, 2, monkeypatch, label="using")
    assert using["origin"] == "repository"
    assert (using["onnx"], using["ccw"], using["bits"]) == (measuring["onnx"], measuring["ccw"], measuring["bits"])
