"""`make eval`: compare a model's built variants on download size, parity, quality and CPU speed.

    python -m eval.run --model isnet-imgly [--variants fp32,int8w] [--data DIR] [--no-torch]

Rows are the torch reference (optional: slow at 1024²), each ONNX variant from build/<model>/ and, unless
--no-refine, each variant with the runtime's edge refinement (`<variant>+refine`, eval/refine.py: the numpy
twin of web_runtime/src/refine.js). Every row is compared with the fp32 ONNX variant (parity; refined rows
with fp32+refine) and, with --data, with the ground-truth masks (quality).
Each row is an object of eval/rows.py (one class per kind); per-image results, download sizes and CPU
latencies are cached under <out>/cache/ (eval/cache.py), keyed by the row's weights sha256 and the image's
sha256, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.cache import IMAGE, ResultCache, image_key
from eval.cpu_probe import CpuProbeError
from eval.dataset import DatasetError, Sample, load_sample, scan
from eval.images import ImageError, sample_photos
from eval.metrics import image_metrics, summarize
from eval.refine import load_params as load_refine_params
from eval.rows import (BROTLI_QUALITY, Bench, OnnxVariantRow, PeerRow, Photo, RefinedRow, Row,
                       TorchReferenceRow)
from common.files import sha256_file
from models.registry import Preprocessing

REFERENCE_VARIANT = "fp32"
PARITY_FIELDS = ("max_abs", "mean_abs", "iou")


class EvalError(RuntimeError):
    """The evaluation cannot start (missing build, unknown variant, ...)."""


def load_manifest(build_dir: Path, model: str) -> dict:
    path = build_dir / model / "manifest.json"
    if not path.is_file():
        raise EvalError(f"{path}: no build manifest; run `make export MODEL={model}` first")
    return json.loads(path.read_text())


def select_variants(manifest: dict, requested: list[str] | None) -> list[str]:
    built = list(manifest.get("variants", {}))
    if REFERENCE_VARIANT not in built:
        raise EvalError(f"the build has no {REFERENCE_VARIANT} variant, the parity reference; re-run `make export`")
    names = requested or built
    unknown = [n for n in names if n not in built]
    if unknown:
        raise EvalError(f"variants not built: {', '.join(unknown)} (built: {', '.join(built)}); "
                        f"run `make export VARIANTS={','.join(names)}`")
    # fp32 always runs (it is the parity reference) and comes first.
    return [REFERENCE_VARIANT] + [n for n in names if n != REFERENCE_VARIANT]


def select_samples(data: Path | None, limit: int | None, log) -> tuple[list[Sample], list[str]]:
    """The photos to evaluate (the dataset's, else the bundled sample photos without masks) and the dataset's
    problems, each logged."""
    samples, problems = scan(Path(data)) if data is not None else ([Sample(p.stem, p, None) for p in sample_photos()], [])
    for message in problems:
        log(f"warning: {message}")
    return samples[:limit] if limit else samples, problems


def build_rows(model: str, manifest: dict, model_dir: Path, variants: list[str], use_torch: bool, peers: bool,
               refine: bool, progress: bool, log) -> list[Row]:
    """The rows in report order: torch, the variants (the parity reference first), peers, refined variants."""
    variant_rows: list[OnnxVariantRow] = []
    for name in variants:
        path = model_dir / manifest["variants"][name]["path"]
        if not path.is_file():
            raise EvalError(f"{path}: variant {name} is in the manifest but its file is missing; re-run `make export`")
        variant_rows.append(OnnxVariantRow(name, path, manifest["variants"][name],
                                           reference=variant_rows[0] if variant_rows else None))
    reference = variant_rows[0]
    rows: list[Row] = list(variant_rows)
    torch_weights = model_dir / "reference.safetensors"
    if use_torch and torch_weights.is_file():
        rows.insert(0, TorchReferenceRow(model, torch_weights, reference))
    elif use_torch:
        log(f"note: {torch_weights} missing, no torch row")
    if peers:
        from eval.peers import peer_models
        rows += [PeerRow(name, path, reference=reference) for name, path in peer_models(progress=progress).items()]
    if refine:
        refined_reference = RefinedRow(reference)
        rows += [refined_reference] + [RefinedRow(row, refined_reference) for row in variant_rows[1:]]
    return rows


def _photo_sha256(sample: Sample) -> str:
    """The photo's sha256; with a mask, of photo and mask together."""
    if sample.mask is None:
        return sha256_file(sample.image)
    return hashlib.sha256(sample.image.read_bytes() + sample.mask.read_bytes()).hexdigest()


def photo_record(row: Row, photo: Photo, truth: np.ndarray | None) -> dict:
    """One row's results on one photo: prediction time, parity and, with ground truth, quality."""
    prediction = photo.prediction(row)
    parity = row.parity(photo)
    record = {"image": photo.name, "seconds": prediction.seconds, "parity": {k: parity[k] for k in PARITY_FIELDS}}
    if truth is not None:
        record["quality"] = image_metrics(prediction.full, truth)
    return record


def evaluate_photos(rows: list[Row], reference: Row, samples: list[Sample], pre: Preprocessing,
                    cache: ResultCache, with_gt: bool, problems: list[str], progress: bool, log,
                    label: str) -> tuple[dict[str, list[tuple[str, dict]]], Photo | None]:
    """Each row's (cache key, record) per photo that could be loaded, from the cache or computed and cached,
    and the first such photo; photos that cannot be loaded are added to ``problems``. Records are keyed by
    the row, the parity ``reference``, the photo (and mask), the preprocessing and ``with_gt``."""
    results: dict[str, list[tuple[str, dict]]] = {row.name: [] for row in rows}
    first = None
    bar = tqdm(samples, desc=label, unit="img", disable=not progress, file=sys.stderr)
    for sample in bar:
        try:
            rgb, truth = load_sample(sample)
        except ImageError as err:
            problems.append(f"{err}; skipped")
            log(f"warning: {err}; skipped")
            continue
        photo, photo_sha256 = Photo(sample.name, rgb, pre), _photo_sha256(sample)
        for row in rows:
            key = image_key(row.sha256, reference.sha256, photo_sha256, pre, with_gt)
            record = cache.get(IMAGE, key)
            if record is None:
                bar.set_postfix_str(f"{sample.name} · {row.name}")
                record = photo_record(row, photo, truth)
                cache.put(IMAGE, key, record, photo.prediction(row).full)
            results[row.name].append((key, record))
        if first is None:
            first = Photo(sample.name, rgb, pre)  # without this photo's predictions, which are not kept
    bar.close()
    return results, first


def row_report(row: Row, results: list[tuple[str, dict]], bench: Bench, out: Path, with_gt: bool) -> dict:
    """report.json's entry for one row: parity and quality summed up, per-image results, size, latency."""
    records = [record for _, record in results]
    return {
        "name": row.name,
        "kind": row.kind,
        "sha256": row.sha256,
        "file": row.file.name if row.file else None,
        "parity": row.parity_summary([dict(image=r["image"], **r["parity"]) for r in records]),
        # the build's parity gate (models/registry.py thresholds on the parity photos); None: not a built variant
        "gate_passed": (getattr(row, "recorded", None) or {}).get("parity", {}).get("passed"),
        # passed by more than the registry's margin: only such a variant becomes the bundle's default
        "gate_clear": ((getattr(row, "recorded", None) or {}).get("gate") or {}).get("clear"),
        "quality": summarize([r["quality"] for r in records if "quality" in r]) if with_gt else None,
        "images": [{"image": r["image"], "parity": r["parity"],
                    "alpha_png": str(bench.cache.alpha_path(key).relative_to(out)),
                    "quality": {k: v for k, v in r.get("quality", {}).items() if not k.endswith("_curve")} or None}
                   for key, r in results],
        "size": row.size(bench),
        "latency": row.latency(bench, [r["seconds"] for r in records]),
    }


def evaluate(model: str, variants: list[str] | None, data: Path | None, build_dir: Path, out: Path,
             use_torch: bool = True, peers: bool = False, limit: int | None = None, latency_runs: int = 5,
             progress: bool = True, log=print, refine: bool = True, brotli_quality: int = BROTLI_QUALITY) -> dict:
    """report.json's content: every row on every photo, then each row summed up with its size and speed."""
    manifest = load_manifest(build_dir, model)
    names, pre = select_variants(manifest, variants), Preprocessing.from_dict(manifest["preprocessing"])
    samples, problems = select_samples(data, limit, log)
    rows = build_rows(model, manifest, build_dir / model, names, use_torch, peers, refine, progress, log)
    reference = next(row for row in rows if row.name == REFERENCE_VARIANT)
    cache, with_gt = ResultCache(out / "cache"), data is not None
    results, first = evaluate_photos(rows, reference, samples, pre, cache, with_gt, problems, progress, log,
                                     label=f"eval {model}")
    if first is None:
        raise DatasetError("no image could be evaluated: " + "; ".join(problems[:3]))
    bench = Bench(cache, log, latency_runs, brotli_quality, latency_photo=first)
    return {
        "schema": "clearcut.eval/1",
        "model": model,
        "preprocessing": pre.to_dict(),
        "data": str(data) if data is not None else None,
        "images": [record["image"] for _, record in results[reference.name]],
        "sources": {s.name: [str(s.image), str(s.mask) if s.mask else None] for s in samples},
        "problems": problems,
        "reference": REFERENCE_VARIANT,
        "refine": {"params": load_refine_params(), "source": "web_runtime/refine.json"} if refine else None,
        "rows": [row_report(row, results[row.name], bench, out, with_gt) for row in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="isnet-imgly")
    parser.add_argument("--variants", help="comma-separated (default: every built variant); fp32 always runs")
    parser.add_argument("--data", type=Path, help="folder with images/ + masks/ for quality against ground truth")
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--out", type=Path, help="default: <build>/eval/<model>")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference row (slow at 1024²)")
    parser.add_argument("--peers", action="store_true",
                        help="add imgly's small and medium ONNX (from the pinned npm package) with imgly's preprocessing")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--gallery", type=int, default=6, help="how many worst images the gallery shows")
    parser.add_argument("--no-refine", action="store_true", help="no <variant>+refine rows (edge refinement)")
    parser.add_argument("--brotli-quality", type=int, default=BROTLI_QUALITY, choices=range(0, 12), metavar="0..11",
                        help=f"brotli level of the size column (default {BROTLI_QUALITY}; 11 is ~30x slower)")
    args = parser.parse_args(argv)

    from eval.report import write_report

    out = args.out or args.build / "eval" / args.model
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    try:
        report = evaluate(args.model, variants, args.data, args.build, out, use_torch=not args.no_torch,
                          peers=args.peers, limit=args.limit, latency_runs=args.latency_runs,
                          refine=not args.no_refine, brotli_quality=args.brotli_quality)
    except (EvalError, DatasetError, CpuProbeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = write_report(report, out, gallery_images=args.gallery)
    print(table)
    if args.data is None:
        print("\nnote: parity only (scikit-image sample photos). Quality against ground truth needs DATA=, "
              "e.g. `make eval DATA=path/to/folder` with images/NAME.jpg + masks/NAME.png.")
    print(f"\nreport: {out / 'report.md'} · {out / 'report.json'} · {out / 'gallery.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
