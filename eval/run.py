"""`make eval`: compare a model's built variants on download size, parity, quality and CPU speed.

    python -m eval.run --model isnet-imgly [--variants fp32,int8w] [--data DIR] [--no-torch]

Rows are the torch reference (optional: slow at 1024²), each ONNX variant from build/<model>/ and, unless
--no-refine, each variant with the runtime's edge refinement (`<variant>+refine`, eval/refine.py: the numpy
twin of web_runtime/src/refine.js). Every row is compared with the fp32 ONNX variant (parity; refined rows
with fp32+refine) and, with --data, with the ground-truth masks (quality).
Per-image results are cached under <out>/cache/, keyed by the row's weights sha256 and the image's sha256,
so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from eval.dataset import DatasetError, Sample, load_sample, scan
from eval.images import ImageError, alpha_to_image_size, preprocess, sample_photos
from eval.metrics import image_metrics, summarize
from eval.parity import compare
from eval.refine import PARAMS_FILE as REFINE_PARAMS_FILE
from eval.refine import load_params as load_refine_params
from eval.refine import refine as refine_alpha
from models.registry import Preprocessing, get_model_config
from common.contract import INPUT_NAME
from common.files import atomic_write_bytes, sha256_file
from common.sessions import cpu_session

REFERENCE_VARIANT = "fp32"
TORCH_ROW = "torch"
THREADS = 2
REFINE_SUFFIX = "+refine"
# brotli quality for the download-size column: 9 (window 2^22) takes ~2 s per 20 MiB here; 11 takes ~30x
# longer for ~2.7 % less on int8w (measured on a 20 MiB chunk). `--brotli-quality 11` for the static best.
BROTLI_QUALITY = 9


class EvalError(RuntimeError):
    """The evaluation cannot start (missing build, unknown variant, ...)."""


def _preprocessing(manifest: dict) -> Preprocessing:
    pre = dict(manifest["preprocessing"])
    pre["input_size"], pre["mean"], pre["std"] = tuple(pre["input_size"]), tuple(pre["mean"]), tuple(pre["std"])
    return Preprocessing(**pre)


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


def download_sizes(path: Path, recorded: dict, sha256: str, brotli_quality: int = BROTLI_QUALITY) -> dict:
    """Raw, gzip (-9) and, when the `brotli` module is importable, brotli sizes of the model file."""
    sizes = {"bytes": path.stat().st_size}
    if recorded.get("sha256") == sha256 and recorded.get("gzip_bytes"):
        sizes["gzip_bytes"] = recorded["gzip_bytes"]
    else:
        sizes["gzip_bytes"] = len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    try:
        import brotli
    except ImportError:
        sizes["brotli_bytes"] = None
    else:
        sizes["brotli_bytes"] = len(brotli.compress(path.read_bytes(), quality=brotli_quality))
        sizes["brotli_quality"] = brotli_quality
    return sizes


# Runs in a fresh process so that its peak RSS, minus what the imports took, is the variant's alone
# (weights, session, arena, one run).
_CPU_PROBE = """
import json, resource, sys
from pathlib import Path
import numpy as np
from eval.latency import cpu_latency_ms
import export.torch_to_onnx  # imports torch: part of the baseline, not of the variant
x = np.load(sys.argv[2])

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

try:  # Linux: "5" resets the peak (VmHWM) to the current RSS, so the import spike does not count
    open("/proc/self/clear_refs", "w").write("5")
    baseline = status_mb("VmRSS")
except OSError:
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = cpu_latency_ms(Path(sys.argv[1]), x, runs=int(sys.argv[3]), threads=int(sys.argv[4]))
peak = status_mb("VmHWM") if status_mb("VmHWM") is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result["peak_rss_mb"] = peak - baseline
print(json.dumps(result))
"""


def cpu_latency_and_memory(path: Path, x: np.ndarray, runs: int) -> dict:
    """onnxruntime CPU latency (median after a warm-up, THREADS threads) and the probe process's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, x)
        done = subprocess.run([sys.executable, "-c", _CPU_PROBE, str(path), str(npy), str(runs), str(THREADS)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise EvalError(f"{path}: the latency probe failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Row:
    """One compared model: an ONNX variant or the torch reference; ``predict`` maps a model input to alpha."""

    def __init__(self, name: str, sha256: str, predict, path: Path | None = None, kind: str = "onnx",
                 preprocess=None, base: "Row | None" = None):
        self.name, self.sha256, self._predict, self.path, self.kind = name, sha256, predict, path, kind
        self.preprocess = preprocess  # rgb -> model input, for peers with their own preprocessing
        self.base = base  # refined rows: the row whose full-size alpha gets refined

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(x), np.float32)[0, 0]


def onnx_row(name: str, path: Path, kind: str = "onnx", preprocess=None) -> Row:
    state = {}

    def predict(x):
        if "session" not in state:  # opened on first use: a fully cached run never loads the model
            state["session"] = cpu_session(path, THREADS)
        return state["session"].run(None, {INPUT_NAME: x})[0]

    return Row(name, sha256_file(path), predict, path, kind, preprocess)


def torch_row(model_name: str, weights: Path) -> Row:
    state = {}

    def predict(x):
        if "model" not in state:  # loaded on first use, like the ONNX sessions
            import torch

            from models.checkpoint import load_model
            torch.set_num_threads(THREADS)
            state["model"] = load_model(get_model_config(model_name), weights, "state_dict").eval()
        from export.torch_to_onnx import reference_alpha
        return reference_alpha(state["model"], get_model_config(model_name), x)

    return Row(TORCH_ROW, sha256_file(weights), predict, weights, kind="torch")


def refine_row(base: Row) -> Row:
    """``base`` followed by the runtime's edge refinement; keyed by the base weights, the refinement
    constants and the refinement code, so a change to either re-runs it."""
    digest = hashlib.sha256("\n".join([base.sha256, REFINE_PARAMS_FILE.read_text(),
                                       Path(__file__).with_name("refine.py").read_text()]).encode()).hexdigest()
    return Row(base.name + REFINE_SUFFIX, digest, None, base.path, kind="refine", base=base)


def _refine_timed(alpha_full: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    refined, _ = refine_alpha(alpha_full, rgb, decontaminate=False)  # colours do not change the alpha
    return refined, time.perf_counter() - start


class Cache:
    """Per-image results as small JSON files plus the full-size alpha as an 8-bit PNG (for the gallery)."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(row: Row, reference_sha: str, image_sha: str, preprocessing: Preprocessing, with_gt: bool) -> str:
        parts = [row.sha256, reference_sha, image_sha, json.dumps(preprocessing.to_dict(), sort_keys=True),
                 str(with_gt)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        if not path.is_file() or not (self.directory / f"{key}.png").is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # a half-written file from an older interrupted run
            return None

    def put(self, key: str, record: dict, alpha_full: np.ndarray) -> None:
        png = self.directory / f"{key}.png"
        tmp = png.with_suffix(".tmp.png")
        Image.fromarray(np.clip(np.rint(alpha_full * 255), 0, 255).astype(np.uint8)).save(tmp)
        tmp.replace(png)
        atomic_write_bytes(self.directory / f"{key}.json", json.dumps(record).encode())

    def alpha_path(self, key: str) -> Path:
        return self.directory / f"{key}.png"


def evaluate(model: str, variants: list[str] | None, data: Path | None, build_dir: Path, out: Path,
             use_torch: bool = True, peers: bool = False, limit: int | None = None, latency_runs: int = 5,
             progress: bool = True, log=print, refine: bool = True, brotli_quality: int = BROTLI_QUALITY) -> dict:
    manifest = load_manifest(build_dir, model)
    names = select_variants(manifest, variants)
    pre = _preprocessing(manifest)
    model_dir = build_dir / model
    problems: list[str] = []

    if data is not None:
        samples, problems = scan(Path(data))
    else:
        samples = [Sample(p.stem, p, None) for p in sample_photos()]
    for message in problems:
        log(f"warning: {message}")
    if limit:
        samples = samples[:limit]

    rows: list[Row] = []
    for name in names:
        path = model_dir / manifest["variants"][name]["path"]
        if not path.is_file():
            raise EvalError(f"{path}: variant {name} is in the manifest but its file is missing; re-run `make export`")
        rows.append(onnx_row(name, path))
    reference = rows[0]
    torch_weights = model_dir / "reference.safetensors"
    if use_torch:
        if torch_weights.is_file():
            rows.insert(0, torch_row(model, torch_weights))
        else:
            log(f"note: {torch_weights} missing, no torch row")

    if peers:
        from eval.peers import imgly_preprocess, peer_models
        for name, path in peer_models(progress=progress).items():
            rows.append(onnx_row(name, path, kind="peer", preprocess=imgly_preprocess))
    if refine:  # after their bases, so that a base computed for this image is reused
        rows += [refine_row(row) for row in rows if row.kind == "onnx"]

    cache = Cache(out / "cache")
    with_gt = data is not None
    per_row: dict[str, list[dict]] = {row.name: [] for row in rows}
    keys: dict[str, dict[str, str]] = {row.name: {} for row in rows}
    bar = tqdm(samples, desc=f"eval {model}", unit="img", disable=not progress, file=sys.stderr)
    for sample in bar:
        try:
            rgb, gt = load_sample(sample)
        except ImageError as err:
            problems.append(f"{err}; skipped")
            log(f"warning: {err}; skipped")
            continue
        image_sha = sha256_file(sample.image) if sample.mask is None else hashlib.sha256(
            sample.image.read_bytes() + sample.mask.read_bytes()).hexdigest()
        row_keys = {row.name: Cache.key(row, reference.sha256, image_sha, pre, with_gt) for row in rows}
        records = {row.name: cache.get(row_keys[row.name]) for row in rows}
        missing = [row for row in rows if records[row.name] is None]
        if missing:
            x = preprocess(rgb, pre)
            start = time.perf_counter()
            reference_alpha = reference.predict(x)
            reference_seconds = time.perf_counter() - start
            full: dict[str, np.ndarray] = {reference.name: alpha_to_image_size(reference_alpha, rgb.shape[:2])}

            def full_alpha(row: Row) -> np.ndarray:
                """The row's alpha at photo size (refined rows: refined), computed once per image."""
                if row.name not in full:
                    if row.base is not None:
                        full[row.name], _ = _refine_timed(full_alpha(row.base), rgb)
                    else:
                        alpha = row.predict(row.preprocess(rgb) if row.preprocess else x)
                        full[row.name] = alpha_to_image_size(alpha, rgb.shape[:2])
                return full[row.name]

            for row in missing:
                bar.set_postfix_str(f"{sample.name} · {row.name}")
                if row.base is not None:
                    alpha_full, seconds = _refine_timed(full_alpha(row.base), rgb)
                    reference_refined = full_alpha(next(r for r in rows if r.base is reference))
                    parity = compare([alpha_full], [reference_refined], [sample.name])["images"][0]
                else:
                    start = time.perf_counter()
                    alpha = reference_alpha if row is reference else row.predict(
                        row.preprocess(rgb) if row.preprocess else x)
                    seconds = reference_seconds if row is reference else time.perf_counter() - start
                    alpha_full = full[reference.name] if row is reference else alpha_to_image_size(alpha, rgb.shape[:2])
                    if alpha.shape == reference_alpha.shape:
                        parity = compare([alpha], [reference_alpha], [sample.name])["images"][0]
                    else:  # a peer at another input size: compare at the photo's size
                        parity = compare([alpha_full], [full[reference.name]], [sample.name])["images"][0]
                full[row.name] = alpha_full
                record = {"image": sample.name, "seconds": seconds,
                          "parity": {k: parity[k] for k in ("max_abs", "mean_abs", "iou")}}
                if gt is not None:
                    record["quality"] = image_metrics(alpha_full, gt)
                cache.put(row_keys[row.name], record, alpha_full)
                records[row.name] = record
        for row in rows:
            per_row[row.name].append(records[row.name])
            keys[row.name][sample.name] = row_keys[row.name]
    bar.close()
    if not any(per_row.values()):
        raise DatasetError("no image could be evaluated: " + "; ".join(problems[:3]))

    first_input = None
    results = []
    by_name: dict[str, dict] = {}
    for row in rows:
        images = per_row[row.name]
        parity_images = [dict(image=r["image"], **r["parity"]) for r in images]
        ious = [p["iou"] for p in parity_images]
        entry = {
            "name": row.name,
            "kind": row.kind,
            "sha256": row.sha256,
            "file": row.path.name if row.path else None,
            "parity": {
                "mean_abs": float(np.mean([p["mean_abs"] for p in parity_images])),
                "max_abs": float(max(p["max_abs"] for p in parity_images)),
                "iou_mean": float(np.mean(ious)),
                "iou_worst": float(min(ious)),
                "worst_image": parity_images[int(np.argmin(ious))]["image"],
            },
            "quality": summarize([r["quality"] for r in images if "quality" in r]) if with_gt else None,
            "images": [{"image": r["image"], "parity": r["parity"], "alpha_png": str(cache.alpha_path(keys[row.name][r["image"]]).relative_to(out)),
                        "quality": {k: v for k, v in r.get("quality", {}).items() if not k.endswith("_curve")} or None}
                       for r in images],
        }
        if row.base is not None:
            base = by_name[row.base.name]
            refine_ms = float(np.median([r["seconds"] for r in images]) * 1000)
            entry["size"] = dict(base["size"])
            entry["latency"] = {"median_ms": base["latency"]["median_ms"] + refine_ms, "refine_ms": refine_ms,
                                "peak_rss_mb": None,
                                "note": f"{row.base.name}'s latency + the numpy refinement's median per image"}
            entry["parity"]["against"] = REFERENCE_VARIANT + REFINE_SUFFIX
        elif row.name == TORCH_ROW:
            entry["size"] = {"bytes": row.path.stat().st_size, "gzip_bytes": None, "brotli_bytes": None}
            entry["latency"] = {"median_ms": float(np.median([r["seconds"] for r in images]) * 1000),
                                "note": "torch eager, per-image wall time during the run"}
        else:
            size_file = out / "cache" / f"size-{row.sha256[:32]}-br{brotli_quality}.json"
            if size_file.is_file():
                entry["size"] = json.loads(size_file.read_text())
            else:
                log(f"download sizes: {row.name} (gzip -9, brotli q{brotli_quality})")
                entry["size"] = download_sizes(row.path, manifest["variants"].get(row.name, {}), row.sha256,
                                               brotli_quality)
                atomic_write_bytes(size_file, json.dumps(entry["size"]).encode())
            latency_file = out / "cache" / f"cpu-{row.sha256[:32]}-{latency_runs}.json"
            if latency_file.is_file():
                entry["latency"] = json.loads(latency_file.read_text())
            else:
                if first_input is None:  # the first photo that could be evaluated
                    first = next(s for s in samples if s.name == images[0]["image"])
                    first_rgb = load_sample(Sample(first.name, first.image, None))[0]
                    first_input = preprocess(first_rgb, pre)
                log(f"latency + peak memory: {row.name} (onnxruntime CPU, {THREADS} threads, median of {latency_runs})")
                entry["latency"] = cpu_latency_and_memory(
                    row.path, row.preprocess(first_rgb) if row.preprocess else first_input, latency_runs)
                atomic_write_bytes(latency_file, json.dumps(entry["latency"]).encode())
        results.append(entry)
        by_name[row.name] = entry

    return {
        "schema": "clearcut.eval/1",
        "model": model,
        "preprocessing": pre.to_dict(),
        "data": str(data) if data is not None else None,
        "images": [s.name for s in samples if any(r["image"] == s.name for r in per_row[reference.name])],
        "sources": {s.name: [str(s.image), str(s.mask) if s.mask else None] for s in samples},
        "problems": problems,
        "reference": REFERENCE_VARIANT,
        "refine": {"params": load_refine_params(), "source": "web_runtime/refine.json"} if refine else None,
        "rows": results,
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
    except (EvalError, DatasetError) as err:
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
