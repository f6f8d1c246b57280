"""Are the coded variant's bytes independent of the CPU's kernel path and of thread counts?

Builds the same small coded variant (a random-init U²-NetP at 64 px, widths 2/3/4/8, one refit, a few photos)
several times from one fp32 graph and compares what each build made, stage by stage:

* natively with 2 threads (onnxruntime intra-op and BLAS), natively with 1 thread,
* under qemu-user as an AVX2-only CPU (``qemu-x86_64 -cpu Haswell``): onnxruntime's MLAS, OpenBLAS and numpy
  then dispatch their AVX2 kernels (the worker prints what it found).

    .venv/bin/python -m bench.reproduce [--work DIR] [--no-qemu] [--unfused] [--committed]

``--committed``: the later builds read the first build's layer sensitivities as a committed measurement
(``quantize/measured/``, as ``make export`` reads the repository's), instead of running the probes themselves.

The fp32 graph and the torch reference's alpha maps are made natively once (torch is not run under qemu); each
build is a worker process (``--worker``) that writes its files and its caches (moments, coded table,
sensitivities) into its own folder, so nothing is shared between builds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common.kernels import pin_blas_kernels  # noqa: E402

pin_blas_kernels()  # before numpy loads OpenBLAS, as `clearcut` does; the workers inherit it
SIZE = 64
WIDTHS = (2, 3, 4, 8)
BUDGET = 3.0
QEMU = "/usr/bin/qemu-x86_64"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- the worker (no torch: it runs under qemu)

def worker(args) -> None:
    import faulthandler
    faulthandler.enable()
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    os.environ["CLEARCUT_CACHE"] = str(Path(args.out) / "cache")
    os.environ["CLEARCUT_THREADS"] = str(args.threads)
    from dataclasses import replace

    import onnxruntime as ort

    from common.contract import INPUT_NAME
    from eval.images import load_rgb, preprocess
    from models.registry import get_model_config
    from quantize import codec, codec_build
    from quantize.static_int8 import to_int8_static

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = replace(get_model_config("u2netp").preprocessing, input_size=(SIZE, SIZE))

    def load(path: Path) -> dict:
        return {INPUT_NAME: preprocess(load_rgb(path), pre)}

    from quantize import codec_sensitivity
    codec_sensitivity.UNFUSED = args.unfused
    if args.measured:
        codec_build.MEASURED = Path(args.measured)
    codec.WIDTHS = codec_build.WIDTHS = WIDTHS
    codec_build.REPO_PHOTOS = None
    calib = [Path(p) for p in args.calib.split(",")]
    parity = [Path(p) for p in args.parity.split(",")]
    fp32 = Path(args.fp32)
    start = time.perf_counter()
    timings = {}
    with threadpool_limits(args.threads, user_api="blas"):
        info = {"blas": [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()],
                "numpy_simd": _numpy_simd(), "onnxruntime": ort.__version__, "threads": args.threads}
        int8 = out / "int8.onnx"
        to_int8_static(fp32, int8, calib, load, INPUT_NAME)
        timings["int8"] = time.perf_counter() - start
        coded = out / "coded.onnx"
        settings = codec_build.CodecSettings(BUDGET, refits=1)
        result = codec_build.code_graph(fp32, int8, coded, calib, load, settings, log=lambda *_: None)
        timings["coded"] = time.perf_counter() - start - timings["int8"]
    numbers = parity_numbers(out, parity, Path(args.reference))
    record = {"info": info, "timings": timings, "parity": numbers,
              "bits": {n: v["bits"] for n, v in result["allocation"]["layers"].items()},
              "sensitivities": result["allocation"]["sensitivity_origin"],
              "sha256": {"int8": _sha(int8), "coded": _sha(coded), "ccw": _sha(coded.with_suffix(".ccw"))}}
    (out / "record.json").write_text(json.dumps(record, indent=1))


def parity_numbers(folder: Path, parity: list[Path], reference: Path) -> dict:
    """IoU (mean, worst) and mean |Δalpha| of a build's int8 base and coded variant vs the torch fp32 reference,
    run by this process's onnxruntime (its CPU's int8 kernels)."""
    from dataclasses import replace

    import numpy as np

    from common.contract import INPUT_NAME
    from common.sessions import cpu_session
    from eval.images import load_rgb, preprocess
    from eval.parity import compare
    from models.registry import get_model_config

    pre = replace(get_model_config("u2netp").preprocessing, input_size=(SIZE, SIZE))
    references = np.load(reference)
    names = [p.name for p in parity]
    inputs = [{INPUT_NAME: preprocess(load_rgb(p), pre)} for p in parity]
    numbers = {}
    for name in ("int8", "coded"):
        session = cpu_session(folder / f"{name}.onnx")
        outputs = [session.run(None, x)[0] for x in inputs]
        found = compare(outputs, [references[n] for n in names], names)
        numbers[name] = {"iou_mean": found["iou_mean"], "iou_worst": found["iou_worst"], "mean_abs": found["mean_abs"]}
    return numbers


def _numpy_simd() -> list[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return [k for k in ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR") if __cpu_features__.get(k)]


# ---------------------------------------------------------------- comparing two builds

def _initializers(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _kind(name: str) -> str:
    if name.endswith("_quantized_scale") or name.endswith("_quantized_zero_point"):
        return "bias scale"
    if name.endswith("_quantized"):
        return "weight/bias"
    if name.endswith("_scale"):
        return "scale"
    if name.endswith("_zero_point"):
        return "zero point"
    return "other"


def differing_initializers(a: Path, b: Path) -> dict[str, list[str]]:
    import numpy as np
    x, y = _initializers(a), _initializers(b)
    found: dict[str, list[str]] = {}
    for name in sorted(set(x) | set(y)):
        if name not in x or name not in y or x[name].shape != y[name].shape or not np.array_equal(x[name], y[name]):
            found.setdefault(_kind(name), []).append(name)
    return found


def _cache_files(folder: Path, pattern: str) -> list[Path]:
    return sorted((folder / "cache" / "codec").glob(pattern))


def stage_differences(a: Path, b: Path) -> dict[str, str]:
    """Per stage of the recipe, how far two builds' intermediate results are apart."""
    import numpy as np
    found = {}
    # moments: H of every conv (max relative difference over H's entries, scaled by max |H|)
    ma, mb = (_cache_files(f, "moments-*/*.h.npy") for f in (a, b))
    worst = 0.0
    equal = 0
    for fa, fb in zip(ma, mb):
        ha, hb = np.load(fa).astype(np.float64), np.load(fb).astype(np.float64)
        d = float(np.abs(ha - hb).max() / max(np.abs(ha).max(), 1e-30))
        equal += d == 0
        worst = max(worst, d)
    found["moments H"] = f"{equal}/{len(ma)} layers equal, max rel diff {worst:.1e}"
    ta, tb = (_cache_files(f, "table-*.npz") for f in (a, b))
    if ta and tb:
        da, db = np.load(ta[0]), np.load(tb[0])
        metas = [json.loads(d["meta"].tobytes()) for d in (da, db)]
        q_diff = sum(int((da[k] != db[k]).sum()) for k in da.files if k.endswith("_q"))
        q_total = sum(da[k].size for k in da.files if k.endswith("_q"))
        e_worst = max(abs(metas[0][n][w][1] - metas[1][n][w][1]) / max(abs(metas[0][n][w][1]), 1e-30)
                      for n in metas[0] for w in metas[0][n])
        found["coded table"] = f"{q_diff}/{q_total} coded weights differ, errors max rel diff {e_worst:.1e}"
    sa, sb = (_cache_files(f, "sensitivity-*.json") for f in (a, b))
    if sa and sb:
        va, vb = (json.loads(s[0].read_text()) for s in (sa, sb))
        s_worst = max(abs(va[n] - vb[n]) / max(abs(va[n]), 1e-30) for n in va)
        found["sensitivities"] = f"{sum(va[n] == vb[n] for n in va)}/{len(va)} equal, max rel diff {s_worst:.1e}"
    return found


# ---------------------------------------------------------------- the driver

def prepare(work: Path) -> tuple[Path, list[Path], list[Path], Path]:
    """The fp32 graph, the photos (copied: nothing else may change them meanwhile) and the reference alphas."""
    import dataclasses

    import torch

    from eval.images import calibration_photos, gate_photos
    from export.pipeline import ExportOptions, run_export
    from models.architectures import build_model
    from models.registry import ParityThresholds, get_model_config
    from quantize.recipes import ALL_VARIANTS

    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    calib = [Path(shutil.copy(p, photos / p.name)) for p in calibration_photos()[:3]]
    parity = [Path(shutil.copy(p, photos / p.name)) for p in gate_photos()[:3]]
    torch.manual_seed(0)
    config = get_model_config("u2netp")
    weights = work / "u2netp_random.pth"
    if not weights.is_file():
        torch.save({f"module.{k}": v for k, v in build_model(config).state_dict().items()}, weights)
    loose = {v: ParityThresholds(max_abs=1e-4) if v == "fp32" else ParityThresholds(iou_mean=0.0) for v in ALL_VARIANTS}
    config = dataclasses.replace(config, thresholds=loose)
    run_export(ExportOptions(config=config, variants=["fp32"], weights=weights, input_size=(SIZE, SIZE),
                             out_dir=work / "build", parity_images=parity, calibration_images=calib, wasm_gate=False,
                             browser_stages=False, latency_runs=1, log=lambda *_: None))
    folder = work / "build" / "u2netp"
    return folder / "u2netp.fp32.onnx", calib, parity, folder / "reference_outputs.npz"


def run_worker(label: str, work: Path, fp32: Path, calib, parity, reference: Path, threads: int,
               emulate: str | None = None, unfused: bool = False, measured: Path | None = None) -> dict:
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "bench.reproduce", "--worker", *(["--unfused"] if unfused else []),
               *(["--measured", str(measured)] if measured else []),
               "--out", str(out), "--threads", str(threads),
               "--fp32", str(fp32), "--calib", ",".join(map(str, calib)), "--parity", ",".join(map(str, parity)),
               "--reference", str(reference)]
    if emulate:
        command = [QEMU, "-cpu", emulate, *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{label}: the worker failed ({done.returncode})")
    record = json.loads((out / "record.json").read_text())
    record["seconds"] = time.perf_counter() - start
    record["folder"] = out
    return record


def report(builds: dict[str, dict]) -> None:
    labels = list(builds)
    first = builds[labels[0]]
    print("\nbuild            | kernels (numpy SIMD; OpenBLAS)        | sensitivit | s     | int8 sha256  | coded sha256 | ccw sha256   "
          "| int8 IoU mean/worst | coded IoU mean/worst")
    for label, r in builds.items():
        kernels = f"{'+'.join(r['info']['numpy_simd'][-2:])}; {r['info']['blas'][0][1]}"
        p = r["parity"]
        print(f"{label:16} | {kernels:37} | {r['sensitivities']:10} | {r['seconds']:5.0f} | " + " | ".join(r["sha256"][k][:12] for k in ("int8", "coded", "ccw"))
              + f" | {p['int8']['iou_mean']:.5f} / {p['int8']['iou_worst']:.5f} | {p['coded']['iou_mean']:.5f} / {p['coded']['iou_worst']:.5f}")
    for label in labels[1:]:
        other = builds[label]
        print(f"\n{labels[0]} vs {label}:")
        for k in ("int8", "coded", "ccw"):
            print(f"  {k:6} sha256 {'equal' if first['sha256'][k] == other['sha256'][k] else 'DIFFERENT'}")
        if first["sha256"]["int8"] != other["sha256"]["int8"]:
            for kind, names in differing_initializers(first["folder"] / "int8.onnx", other["folder"] / "int8.onnx").items():
                print(f"  int8 base: {len(names)} {kind} initializers differ, e.g. {', '.join(names[:3])}")
        for stage, text in stage_differences(first["folder"], other["folder"]).items():
            print(f"  {stage}: {text}")
        if first["sha256"]["coded"] != other["sha256"]["coded"]:
            for kind, names in differing_initializers(first["folder"] / "coded.onnx", other["folder"] / "coded.onnx").items():
                print(f"  coded: {len(names)} {kind} initializers differ")
        same = [n for n in first["bits"] if first["bits"][n] == other["bits"].get(n)]
        print(f"  per-layer widths: {len(same)}/{len(first['bits'])} identical")
        for where, field in (("each run by its own CPU", "parity"), ("both run natively", "parity_here")):
            for v in ("int8", "coded"):
                a, b = first[field][v], other[field][v]
                print(f"  {v} parity ({where}): IoU mean {a['iou_mean']:.5f} vs {b['iou_mean']:.5f} (Δ "
                      f"{abs(a['iou_mean'] - b['iou_mean']):.1e}), worst {a['iou_worst']:.5f} vs {b['iou_worst']:.5f} "
                      f"(Δ {abs(a['iou_worst'] - b['iou_worst']):.1e})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "reproduce")
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--cpu", default="Haswell", help="the CPU qemu emulates")
    parser.add_argument("--worker", action="store_true")
    for name in ("out", "fp32", "calib", "parity", "reference", "measured"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--committed", action="store_true",
                        help="later builds read the first build's sensitivities as a committed measurement")
    parser.add_argument("--unfused", action="store_true",
                        help="measure the codec's sensitivities unfused (quantize.codec_sensitivity.UNFUSED)")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    work = args.work.resolve()
    fp32, calib, parity, reference = prepare(work)
    builds = {"native 2 threads": run_worker("native-2", work, fp32, calib, parity, reference, 2, unfused=args.unfused)}
    measured = work / "native-2" / "cache" / "codec" if args.committed else None
    builds["native 1 thread"] = run_worker("native-1", work, fp32, calib, parity, reference, 1, unfused=args.unfused,
                                           measured=measured)
    if not args.no_qemu:
        if not Path(QEMU).is_file():
            raise SystemExit(f"{QEMU} is missing: apt-get install -y qemu-user")
        builds[f"qemu {args.cpu} 2 thr"] = run_worker(f"qemu-{args.cpu}", work, fp32, calib, parity, reference, 2,
                                                     emulate=args.cpu, unfused=args.unfused, measured=measured)
    for record in builds.values():  # every build's files run here too: made differently vs run differently
        record["parity_here"] = parity_numbers(record["folder"], parity, reference)
    report(builds)


if __name__ == "__main__":
    main()
