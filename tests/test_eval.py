"""`make eval`: metrics on hand-made masks, dataset errors, and the whole eval on a tiny model."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import cache as result_cache
from eval import run
from eval.cpu_probe import CpuProbeError, measure
from eval.dataset import DatasetError, load_sample, scan
from eval.images import ImageError, sample_photos
from eval.metrics import boundary_scores, image_metrics, summarize
from eval.parity import compare, image_parity, summarize_parity
from eval.refine import load_params, refine
from eval.rows import Bench, ModelRow, RefinedRow
from export.pipeline import ExportOptions, run_export
from models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, get_model_config

SIZE = 64


def square(shape=(64, 64), top=20, left=20, side=20) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[top:top + side, left:left + side] = 1.0
    return mask


# ---------------------------------------------------------------- metrics

def test_perfect_mask_scores_perfectly():
    gt = square()
    m = image_metrics(gt, gt, band=2)
    assert m["mae"] == 0.0
    assert m["max_f"] == pytest.approx(1.0)
    assert m["s_measure"] == pytest.approx(1.0)
    assert m["weighted_f"] == pytest.approx(1.0)
    assert m["e_measure"] > 0.99
    assert m["boundary_f"] == 1.0 and m["boundary_iou"] == 1.0


def test_empty_prediction():
    gt = square()
    m = image_metrics(np.zeros_like(gt), gt, band=2)
    assert m["mae"] == pytest.approx(400 / 4096)  # exactly the foreground fraction
    assert m["weighted_f"] == pytest.approx(0.0, abs=1e-6)
    assert m["mean_f"] < 0.01
    assert m["boundary_f"] == 0.0 and m["boundary_iou"] == 0.0


def test_inverted_prediction():
    gt = square()
    m = image_metrics(1.0 - gt, gt, band=2)
    assert m["mae"] == pytest.approx(1.0)
    assert m["s_measure"] == pytest.approx(0.0, abs=1e-6)
    assert m["weighted_f"] == pytest.approx(0.0, abs=1e-6)
    assert m["mean_f"] < 0.01
    # The inverted mask's edge hugs the true edge, so a contour measure cannot see it; the region one does.
    assert m["boundary_iou"] == 0.0


def test_one_pixel_shift():
    gt = square()
    shifted = np.roll(gt, 1, axis=1)
    m = image_metrics(shifted, gt, band=2)
    assert m["mae"] == pytest.approx(40 / 4096)  # one column gained, one lost, 20 px each
    assert 0.9 < m["max_f"] < 1.0
    assert 0.9 < m["weighted_f"] < 1.0
    assert m["boundary_f"] == 1.0  # within the 2 px band
    strict = boundary_scores(shifted, gt, band=0)
    assert strict["boundary_f"] == pytest.approx(38 / 76)  # exact match: only 19 + 19 of the top/bottom rows
    assert 0.0 < m["boundary_iou"] < 1.0


def test_summary_averages_curves():
    gt = square()
    per_image = [image_metrics(gt, gt, band=2), image_metrics(np.zeros_like(gt), gt, band=2)]
    s = summarize(per_image)
    assert s["images"] == 2
    assert s["mae"] == pytest.approx(200 / 4096)
    assert s["max_f"] == pytest.approx(np.max(np.mean([m["f_curve"] for m in per_image], axis=0)))


# ---------------------------------------------------------------- datasets

def write_pair(root, name, size=(48, 40), seed=0, mask_size=None, suffix=".jpg"):
    rng = np.random.default_rng(seed)
    height, width = size
    rgb = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    rgb[mask > 0] = 200
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "images" / f"{name}{suffix}")
    mh, mw = mask_size or size
    Image.fromarray(mask).resize((mw, mh)).save(root / "masks" / f"{name}.png")


@pytest.fixture()
def messy_dataset(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        write_pair(root, f"good{i}", seed=i, suffix=".png" if i == 2 else ".jpg")
    write_pair(root, "wrongsize", mask_size=(30, 30))
    write_pair(root, "nomask")
    (root / "masks" / "nomask.png").unlink()
    (root / "images" / "notes.txt").write_text("not a photo")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("L", (10, 10)).save(root / "masks" / "broken.png")
    return root


def test_scan_names_each_bad_file(messy_dataset):
    samples, problems = scan(messy_dataset)
    assert [s.name for s in samples] == ["broken", "good0", "good1", "good2", "wrongsize"]
    text = "\n".join(problems)
    assert "notes.txt: not an image file" in text
    assert "nomask.jpg: missing mask" in text and "masks/nomask.png" in text
    by_name = {s.name: s for s in samples}
    with pytest.raises(ImageError, match=r"wrongsize\.png: mask is 30x30 but its photo is 40x48"):
        load_sample(by_name["wrongsize"])
    with pytest.raises(ImageError, match=r"broken\.png: not a readable image"):
        load_sample(by_name["broken"])


def test_empty_or_wrong_folders_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="no images/ folder"):
        scan(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match=f"{tmp_path}: no usable image/mask pairs"):
        scan(tmp_path)


# ---------------------------------------------------------------- parity, cache, rows, CPU probe

def test_compare_sums_up_with_summarize_parity():
    reference = [square(), square(top=0)]
    outputs = [square(), np.roll(square(top=0), 3, axis=1) * 0.9]
    per_image = [image_parity(n, o, r) for n, o, r in zip("ab", outputs, reference)]
    assert per_image[0] == {"image": "a", "max_abs": 0.0, "mean_abs": 0.0, "iou": 1.0}
    assert per_image[1]["max_abs"] == pytest.approx(1.0) and per_image[1]["iou"] == pytest.approx(17 / 23)
    summary = summarize_parity(per_image)
    assert summary["worst_image"] == "b" and summary["iou_worst"] == per_image[1]["iou"]
    assert compare(outputs, reference, ["a", "b"]) == {**summary, "images": per_image}


def test_cache_treats_unreadable_records_as_missing(tmp_path):
    cache = result_cache.ResultCache(tmp_path / "cache")
    measured = []

    def measure_size():
        measured.append(1)
        return {"bytes": 123}

    assert cache.get_or_measure(result_cache.SIZE, "k", measure_size) == {"bytes": 123}
    assert cache.get_or_measure(result_cache.SIZE, "k", measure_size) == {"bytes": 123} and len(measured) == 1
    path = cache.record_path(result_cache.SIZE, "k")
    assert path.name == "size-k.json"
    for damaged in (b'{"bytes": 1', b"\xff\xfe", b"[1, 2]", b""):  # truncated, not UTF-8, not a record, empty
        path.write_bytes(damaged)
        assert cache.get(result_cache.SIZE, "k") is None
    assert cache.get_or_measure(result_cache.SIZE, "k", measure_size) == {"bytes": 123} and len(measured) == 2
    assert json.loads(path.read_text()) == {"bytes": 123}
    assert [p.name for p in path.parent.iterdir()] == ["size-k.json"]  # no temporary files left behind


def test_cache_image_records_come_with_their_alpha(tmp_path):
    cache = result_cache.ResultCache(tmp_path)
    alpha = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    cache.put(result_cache.IMAGE, "k", {"image": "a"}, alpha)
    assert cache.get(result_cache.IMAGE, "k") == {"image": "a"}
    assert np.array_equal(np.asarray(Image.open(cache.alpha_path("k"))), np.rint(alpha * 255).astype(np.uint8))
    cache.alpha_path("k").unlink()
    assert cache.get(result_cache.IMAGE, "k") is None  # a record without its PNG is not a result
    with pytest.raises(ValueError, match="image records only"):
        cache.put(result_cache.CPU, "k", {}, alpha)
    with pytest.raises(ValueError, match="image records only"):
        cache.put(result_cache.IMAGE, "k", {})


class ConstantRow(ModelRow):
    """A row kind of its own: a 'model' that answers every input with one alpha value, counting its runs."""
    kind = "constant"

    def __init__(self, name, value, reference=None):
        super().__init__(name, f"{name}-{value}", None, reference)
        self.value, self.runs = value, 0

    def run(self, x):
        self.runs += 1
        return np.full((1, 1) + x.shape[2:], self.value, np.float32)

    def size(self, bench):
        return {"bytes": 1, "gzip_bytes": None, "brotli_bytes": None}

    def latency(self, bench, seconds):
        return {"median_ms": 1000 * max(seconds)}


def test_a_new_row_kind_is_one_class(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        write_pair(root, f"p{i}", seed=i)
    samples, _ = scan(root)
    pre = Preprocessing(input_size=(16, 16), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    reference = ConstantRow("ref", 0.25)
    rows = [reference, ConstantRow("high", 0.75, reference), RefinedRow(reference)]
    out = tmp_path / "eval"
    cache = result_cache.ResultCache(out / "cache")

    def evaluate_photos():
        return run.evaluate_photos(rows, reference, samples, pre, cache, True, [], False, print, "test")

    results, first = evaluate_photos()
    assert first.name == "p0" and reference.runs == 2  # once per photo: the refined row and parity reuse it
    report = run.row_report(rows[1], results["high"], Bench(cache, print, 1, 9, first), out, True)
    assert report["kind"] == "constant" and report["file"] is None and report["size"]["bytes"] == 1
    assert report["parity"] == {"max_abs": 0.5, "mean_abs": 0.5, "iou_mean": 0.0, "iou_p10": 0.0, "iou_worst": 0.0,
                                "worst_image": "p0", "worst_images": ["p0 0.0000", "p1 0.0000"]}
    assert report["quality"]["images"] == 2 and report["latency"]["median_ms"] >= 0
    assert [i["image"] for i in report["images"]] == ["p0", "p1"]
    assert all((out / i["alpha_png"]).is_file() for i in report["images"])
    refined = rows[2].parity_summary([dict(image=r["image"], **r["parity"]) for _, r in results["ref+refine"]])
    assert refined["against"] == "ref+refine" and refined["max_abs"] == 0.0
    again, _ = evaluate_photos()  # all from the cache: no model runs
    assert again == results and reference.runs == 2 and rows[1].runs == 2


def test_cpu_probe_is_a_torch_free_module(tiny_build, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys, eval.cpu_probe; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    result = measure(tiny_build / "u2netp" / "u2netp.fp16.onnx", x, runs=2, threads=1)
    assert result["runs"] == 2 and result["threads"] == 1 and result["median_ms"] > 0
    assert result["peak_rss_mb"] > 0
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(CpuProbeError, match="broken.onnx: the latency probe failed"):
        measure(broken, x, runs=1, threads=1)


# ---------------------------------------------------------------- the whole eval

@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory, tiny_u2netp_weights):
    out = tmp_path_factory.mktemp("build")
    run_export(ExportOptions(config=get_model_config("u2netp"), variants=["fp32", "fp16"], weights=tiny_u2netp_weights,
                             input_size=(SIZE, SIZE), out_dir=out, latency_runs=1, parity_images=sample_photos(),
                             log=lambda *_: None))
    return out


def test_full_eval_with_data(tiny_build, messy_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--model", "u2netp", "--build", str(tiny_build), "--out", str(out), "--data", str(messy_dataset),
            "--latency-runs", "1"]
    assert run.main(args) == 0
    printed = capsys.readouterr()
    for name in ("report.json", "report.md", "size_vs_quality.png", "latency.png", "gallery.html"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["torch", "fp32", "fp16", "fp32+refine", "fp16+refine"]
    assert rows["fp32"]["parity"]["mean_abs"] == 0.0 and rows["fp32"]["parity"]["max_abs"] == 0.0
    assert rows["fp32"]["parity"]["iou_worst"] == 1.0
    assert rows["torch"]["parity"]["max_abs"] < 1e-4
    assert report["images"] == ["good0", "good1", "good2"]
    for row in rows.values():
        assert row["quality"]["images"] == 3 and 0.0 <= row["quality"]["mae"] <= 1.0
        assert len(row["images"]) == 3 and row["images"][0]["quality"]["weighted_f"] is not None
        assert row["size"]["bytes"] > 0 and row["latency"]["median_ms"] > 0
    if importlib.util.find_spec("brotli"):
        assert 0 < rows["fp16"]["size"]["brotli_bytes"] < rows["fp16"]["size"]["bytes"]
    # Refined rows: same download as their variant, parity against fp32+refine, time = variant + refinement.
    for name in ("fp32", "fp16"):
        refined = rows[name + "+refine"]
        assert refined["kind"] == "refine" and refined["size"] == rows[name]["size"]
        assert refined["latency"]["refine_ms"] > 0
        assert refined["latency"]["median_ms"] == pytest.approx(rows[name]["latency"]["median_ms"]
                                                                + refined["latency"]["refine_ms"])
    assert rows["fp32+refine"]["parity"]["max_abs"] == 0.0 and rows["fp32+refine"]["parity"]["against"] == "fp32+refine"
    assert report["refine"]["params"] == load_params()
    assert "| fp16+refine |" in printed.out
    assert "## Edge refinement" in (out / "report.md").read_text()
    problems = "\n".join(report["problems"])
    for fragment in ("notes.txt", "nomask.jpg", "wrongsize.png", "broken.png"):
        assert fragment in problems
    assert "wrongsize.png: mask is 30x30" in printed.out + printed.err
    assert "| fp32 |" in printed.out and "smallest_within_bound:" in printed.out
    gallery = (out / "gallery.html").read_text()
    images = [part.split("'")[0] for part in gallery.split("src='")[1:]]
    assert images and all((out / src).is_file() for src in images)
    assert report["recommendation"]["best_quality"] in rows

    # Resume: a second run reads every per-image result from the cache and gives the same numbers.
    cached = sorted((out / "cache").glob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert run.main(args + ["--no-torch"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert again["rows"][0]["parity"] == rows["fp32"]["parity"]
    assert again["rows"][1]["quality"] == rows["fp16"]["quality"]
    assert again["rows"][3]["quality"] == rows["fp16+refine"]["quality"]


def test_eval_without_data_is_parity_only(tiny_build, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run.main(["--model", "u2netp", "--build", str(tiny_build), "--out", str(out), "--no-torch",
                     "--variants", "fp16", "--latency-runs", "1", "--no-refine"]) == 0
    printed = capsys.readouterr().out
    assert "Quality against ground truth needs DATA=" in printed
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["fp32", "fp16"]
    assert report["refine"] is None
    assert all(r["quality"] is None for r in report["rows"])
    assert report["rows"][0]["parity"]["mean_abs"] == 0.0
    assert (out / "gallery.html").is_file()


def test_bad_requests_are_explained(tiny_build, tmp_path, capsys):
    assert run.main(["--model", "u2netp", "--build", str(tiny_build), "--variants", "int8"]) == 2
    assert "variants not built: int8" in capsys.readouterr().err
    assert run.main(["--model", "u2net", "--build", str(tiny_build)]) == 2
    assert "run `make export MODEL=u2net`" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert run.main(["--model", "u2netp", "--build", str(tiny_build), "--data", str(empty),
                     "--out", str(tmp_path / "o")]) == 2
    assert f"{empty}: no usable image/mask pairs" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make setup-system)")
def test_gallery_opens_in_chromium(tiny_build, messy_dataset, tmp_path):
    out = tmp_path / "eval"
    assert run.main(["--model", "u2netp", "--build", str(tiny_build), "--out", str(out), "--no-torch",
                     "--data", str(messy_dataset), "--latency-runs", "1"]) == 0
    # A copy of the page that records, once loaded, how many of its images failed to decode.
    probe = out / "probe.html"
    probe.write_text((out / "gallery.html").read_text().replace(
        "</body>", "<script>addEventListener('load', () => { document.body.dataset.broken = [...document.images]"
                   ".filter(i => !i.naturalWidth).length; document.body.dataset.total = document.images.length; });"
                   "</script></body>"))
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout).group(0)
    assert 'data-broken="0"' in body
    # 3 images x (photo + truth + 4 rows x (cutout + error map) + 3 decontamination crops)
    assert 'data-total="39"' in body


def test_imgly_peer_preprocessing():
    from eval.peers import imgly_preprocess

    rgb = np.full((30, 50, 3), 128, np.uint8)
    rgb[:, :, 2] = 255
    x = imgly_preprocess(rgb)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == np.float32
    assert np.allclose(x[0, 0], 0.0) and np.allclose(x[0, 2], 127 / 256)


# ---------------------------------------------------------------- edge refinement (numpy twin of refine.js)

def edge_scene(height=300, width=400, blur=3):
    """A red disc on a green background; the 'model' mask is the disc blurred (a coarse mask)."""
    yy, xx = np.mgrid[0:height, 0:width]
    truth = (((yy - height / 2) ** 2 + (xx - width / 2) ** 2) < (height / 3) ** 2).astype(np.float32)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[...] = (40, 160, 60)
    rgb[truth > 0] = (200, 30, 40)
    from scipy import ndimage
    coarse = ndimage.uniform_filter(truth, size=blur).astype(np.float32)
    return rgb, truth, coarse


def test_refine_constants_are_the_single_json():
    params = load_params()
    for key in ("work_max_side", "radius", "eps", "uncertain", "band_radius", "decontaminate", "default"):
        assert key in params, key


def test_refine_snaps_a_coarse_mask_to_the_colour_edge():
    rgb, truth, coarse = edge_scene()
    refined, colours = refine(coarse, rgb)
    assert refined.shape == truth.shape and refined.dtype == np.float32
    assert 0.0 <= refined.min() and refined.max() <= 1.0
    assert np.abs(refined - truth).mean() < 0.7 * np.abs(coarse - truth).mean()
    # Confident pixels far from the edge keep the model's values exactly.
    assert refined[0, 0] == coarse[0, 0] and refined[150, 200] == coarse[150, 200]


def test_decontamination_removes_the_background_fringe():
    rgb, truth, _ = edge_scene()
    from scipy import ndimage
    alpha = ndimage.uniform_filter(truth, size=3).astype(np.float32)  # a soft 1-px edge
    a = alpha[..., None]
    mixed = np.rint(np.array([200, 30, 40]) * a + np.array([40, 160, 60]) * (1 - a)).astype(np.uint8)
    refined, colours = refine(alpha, mixed)
    edge = (refined > 0.2) & (refined < 0.8)
    assert edge.sum() > 20
    red = np.array([200, 30, 40], np.float64)
    before = np.abs(mixed[edge] - red).mean()
    after = np.abs(colours[edge] - red).mean()
    assert after < 0.3 * before, (before, after)
    _, untouched = refine(alpha, mixed, decontaminate=False)
    assert np.array_equal(untouched, mixed)


def test_refine_works_at_reduced_resolution_for_big_photos():
    rgb, truth, coarse = edge_scene(height=90, width=2100, blur=9)
    params = dict(load_params(), work_max_side=700)  # 2100 px → a 3x smaller work image
    refined, _ = refine(coarse, rgb, params)
    assert refined.shape == coarse.shape
    assert np.abs(refined - truth).mean() < np.abs(coarse - truth).mean()
