"""`clearcut cut` on a tiny random U^2-NetP build and its bundle: folders, broken and odd photos, skipping,
overwriting, bundle integrity, output formats. Mask parity with the browser: tests/browser/test_cut_parity.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.images import sample_photos
from export.cli import main as clearcut
from web_runtime.build_bundle import ORT_PACKAGE, build_bundle

OLD = 1_000_000_000  # an mtime no cut would leave behind


def _photo(index: int, size: tuple[int, int]) -> Image.Image:
    return Image.open(sample_photos()[index]).convert("RGB").resize(size)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """good.png, a truncated PNG, a JPEG stored 120x80 with EXIF Orientation 6 (shown 80x120), an RGBA PNG
    whose left third is fully transparent, and one photo in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    _photo(0, (160, 160)).save(root / "good.png")
    (root / "corrupt.png").write_bytes((root / "good.png").read_bytes()[:3000])
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(1, (120, 80)).save(root / "rotated.jpg", exif=exif, quality=95)
    rgba = _photo(2, (150, 100)).convert("RGBA")
    alpha = np.full((100, 150), 255, np.uint8)
    alpha[:, :50] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "transparent.png")
    (root / "sub").mkdir()
    _photo(3, (96, 128)).save(root / "sub" / "nested.jpg")
    return root


@pytest.fixture(scope="module")
def bundle(tiny_build, tmp_path_factory) -> Path:
    if not (ORT_PACKAGE / "package.json").exists():
        pytest.skip("web_runtime/node_modules missing (run `make setup-web`)")
    out = tmp_path_factory.mktemp("bundle") / "dist"
    build_bundle(tiny_build, out, backends=("wasm",), chunk_bytes=1 << 20)
    return out


def _outputs(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_folder_cut_skip_and_overwrite(photos, tiny_build, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["cut", str(photos), "-r", "-o", str(out), "--build", str(tiny_build)]
    assert clearcut(args) == 1  # one photo failed, the others were cut
    printed = capsys.readouterr()
    assert "corrupt.png: not a readable image" in printed.err
    assert "cut 4" in printed.out and "failed 1" in printed.out
    assert set(_outputs(out)) == {"good.png", "rotated.png", "transparent.png", "sub/nested.png"}
    with Image.open(out / "rotated.png") as img:
        assert img.size == (80, 120) and img.mode == "RGBA"  # EXIF orientation applied
    with Image.open(out / "transparent.png") as img:
        assert (np.asarray(img)[:, :50, 3] == 0).all()  # the photo's own transparency is kept

    for path in out.rglob("*.png"):
        os.utime(path, ns=(OLD, OLD))
    assert clearcut(args) == 1
    assert "cut 0" in capsys.readouterr().out
    assert set(_outputs(out).values()) == {OLD}  # existing outputs skipped, untouched

    assert clearcut(args + ["--overwrite"]) == 1
    assert "cut 4" in capsys.readouterr().out
    assert OLD not in _outputs(out).values()
    assert not list(out.rglob("*.tmp"))


def test_bundle_cuts_what_the_build_cuts_and_refuses_a_tampered_chunk(photos, tiny_build, bundle, tmp_path, capsys):
    inputs = [str(photos / "good.png"), str(photos / "rotated.jpg"), str(photos / "sub" / "*.jpg")]
    masks = {}
    for source in ("--build", "--bundle"):
        out = tmp_path / source.strip("-")
        model = tiny_build if source == "--build" else bundle
        assert clearcut(["cut", *inputs, "-o", str(out), source, str(model), "--output", "mask"]) == 0
        masks[source] = {name: np.asarray(Image.open(out / name)) for name in _outputs(out)}
    assert set(masks["--bundle"]) == {"good.png", "rotated.png", "nested.png"}
    for name, mask in masks["--bundle"].items():
        assert np.array_equal(mask, masks["--build"][name]), name

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    chunk = tampered / manifest["variants"][manifest["default_variant"]]["chunks"][1]["path"]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    out = tmp_path / "never"
    assert clearcut(["cut", *inputs, "-o", str(out), "--bundle", str(tampered)]) == 1
    err = capsys.readouterr().err
    assert f"chunk {chunk} of variant" in err and "failed its integrity check" in err and "refused" in err
    assert not out.exists()


def test_formats_clashes_limits_and_usage_errors(photos, tiny_build, tmp_path, capsys):
    cut = ["cut", "-o", str(tmp_path / "out"), "--build", str(tiny_build)]
    # JPEG has no alpha: a cutout is composited on --color, as in the browser
    assert clearcut(cut + [str(photos / "transparent.png"), "--format", "jpeg", "--color", "#f00"]) == 0
    with Image.open(tmp_path / "out" / "transparent.jpeg") as img:
        assert img.mode == "RGB" and img.size == (150, 100)
        left = np.asarray(img)[:, :45].astype(int)
    assert np.abs(left - [255, 0, 0]).max() <= 8

    assert clearcut(cut + [str(photos / "good.png"), "--output", "color", "--format", "webp", "--refine", "on"]) == 0
    with Image.open(tmp_path / "out" / "good.webp") as img:
        assert img.format == "WEBP" and img.size == (160, 160)

    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(photos / "good.png", clash / "a.png")
    shutil.copy(photos / "rotated.jpg", clash / "a.jpg")
    assert clearcut(cut + [str(clash)]) == 1
    err = capsys.readouterr().err
    assert f"{clash / 'a.png'}: its output" in err and f"is the output of {clash / 'a.jpg'} too" in err

    assert clearcut(cut + [str(photos / "good.png"), "--overwrite", "--max-pixels", "1000"]) == 1
    assert "exceeds the 1,000-pixel limit" in capsys.readouterr().err

    assert clearcut(cut + [str(photos / "good.png"), "--color", "white"]) == 2
    assert clearcut(cut + [str(tmp_path / "missing.png")]) == 2
    assert clearcut(cut + [str(photos / "sub" / "*.png")]) == 2
    assert clearcut(cut + [str(photos / "good.png"), "--variant", "int8"]) == 2
    err = capsys.readouterr().err
    for message in ("'white' is not #rgb or #rrggbb", "missing.png: no such file or folder",
                    "*.png: no such file or folder, or no image matches", "no variant 'int8'"):
        assert message in err
    with pytest.raises(SystemExit) as exited:
        clearcut(cut + [str(photos / "good.png"), "--format", "gif"])
    assert exited.value.code == 2


def test_plan_mirrors_folders_and_leaves_its_own_outputs_alone(photos, tmp_path):
    from eval.cut import UsageError, plan

    photos = shutil.copytree(photos, tmp_path / "photos")
    out = photos / "sub" / "cut"  # an output folder inside the folder being cut
    out.mkdir()
    (out / "earlier.png").write_bytes((photos / "good.png").read_bytes())
    jobs = plan([str(photos), str(photos / "good.png")], out, recursive=True, fmt="webp")
    assert {(j.source.relative_to(photos).as_posix(), j.target.relative_to(out).as_posix()) for j in jobs} == {
        ("corrupt.png", "corrupt.webp"), ("good.png", "good.webp"), ("rotated.jpg", "rotated.webp"),
        ("transparent.png", "transparent.webp"), ("sub/nested.jpg", "sub/nested.webp")}
    with pytest.raises(UsageError, match="the output folder itself"):
        plan([str(photos)], photos)


def test_staged_bundle_variant_runs_stage_by_stage(photos, bundle, tmp_path, capsys):
    """A variant shipped as stages: here an Identity graph, then the model reading the original input by name."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    from common.files import sri

    staged = shutil.copytree(bundle, tmp_path / "staged")
    manifest = json.loads((staged / "manifest.json").read_text())
    entry = manifest["variants"]["fp32"]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 64, 64]) for n in ("input", "copy")]
    first = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["copy"])], "first",
                                                io[:1], io[1:]), opset_imports=[helper.make_opsetid("", 17)])
    data = first.SerializeToString()
    onnx.checker.check_model(first)
    digest = hashlib.sha256(data).hexdigest()
    (staged / "chunks" / f"{digest}.bin").write_bytes(data)
    chunk = {"path": f"chunks/{digest}.bin", "sha256": digest, "bytes": len(data), "integrity": sri(data)}
    stages = [{"name": "first", "bytes": len(data), "sha256": digest, "inputs": ["input"], "outputs": ["copy"],
               "session_config": {}, "chunks": [chunk]},
              {"name": "model", "bytes": entry["bytes"], "sha256": entry.pop("sha256"), "inputs": ["input"],
               "outputs": ["alpha"], "session_config": entry.pop("session_config"), "chunks": entry.pop("chunks")}]
    manifest["variants"]["fp32"] = {**entry, "bytes": entry["bytes"] + len(data), "stages": stages}
    (staged / "manifest.json").write_text(json.dumps(manifest))

    masks = []
    for root in (bundle, staged):
        out = tmp_path / f"out-{root.name}"
        assert clearcut(["cut", str(photos / "good.png"), "-o", str(out), "--bundle", str(root), "--variant", "fp32",
                         "--output", "mask"]) == 0
        masks.append(np.asarray(Image.open(out / "good.png")))
    assert f"fp32 (bundle {staged}, 2 stages)" in capsys.readouterr().err and np.array_equal(*masks)
