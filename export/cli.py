"""The `clearcut` command: list models, pull weights, export variants, cut photos, publish the bundle."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.kernels import pin_blas_kernels

pin_blas_kernels()  # before numpy loads OpenBLAS: the same arithmetic on every x86-64 CPU (common/kernels.py)

from models.registry import DEFAULT_MODEL, REGISTRY, get_model_config
from quantize.recipes import ALL_VARIANTS


def _images(folder: str | None) -> list[Path] | None:
    if not folder:
        return None
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not paths:
        raise SystemExit(f"error: no .jpg/.png/.webp images in {folder}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clearcut", description="ClearCut model toolchain")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered models")
    p_pull = sub.add_parser("pull", help="download and verify a model's weights into the cache")
    p_pull.add_argument("--model", default=DEFAULT_MODEL)
    p_exp = sub.add_parser("export", help="export, quantize and parity-check a model into build/<model>/")
    p_exp.add_argument("--model", default=DEFAULT_MODEL)
    p_exp.add_argument("--variants", default="", help=f"comma-separated subset of {','.join(ALL_VARIANTS)}")
    p_exp.add_argument("--weights", default="", help="a local weights file instead of the registry's source")
    p_exp.add_argument("--size", type=int, default=0, help="square input size (default: the registry's)")
    p_exp.add_argument("--out", default="build")
    p_exp.add_argument("--parity-images", default="", help="folder of photos for the parity gate")
    p_exp.add_argument("--calibration-images", default="", help="folder of photos for int8 calibration")
    p_exp.add_argument("--strict", action="store_true",
                       help="fail on any variant below its gate (default: it is left out of dist/ and reported)")
    p_exp.add_argument("--no-wasm-gate", action="store_true",
                       help="gate in native onnxruntime only (default: onnxruntime-web's WASM engine decides)")
    p_exp.add_argument("--no-engine-graphs", action="store_true",
                       help="no WebGPU graphs of the coded variants (default: built, gated, placement-checked in Chromium)")
    p_cut = sub.add_parser("cut", help="remove the background of photos on this machine (eval/cut.py)",
                           description="Cut photos with a built variant, as the browser does. Outputs are "
                           "OUT/<input path relative to what was named, without suffix>.<format>; on a name clash "
                           "the first input is cut and the other fails. Exit 1 if any photo failed, 2 for bad usage.")
    p_cut.add_argument("inputs", nargs="+", metavar="IN", help="photo files, folders or (quoted) glob patterns")
    p_cut.add_argument("-o", "--out", required=True, help="output folder")
    p_cut.add_argument("-r", "--recursive", action="store_true", help="also the images in subfolders of IN folders")
    model = p_cut.add_mutually_exclusive_group()
    model.add_argument("--build", help=f"build folder (default: build/{DEFAULT_MODEL} when it exists)")
    model.add_argument("--bundle", help="bundle folder (dist/): chunks verified by sha256, run from memory")
    p_cut.add_argument("--variant", help="default: the bundle's default_variant (for a build: the same rule)")
    p_cut.add_argument("--output", choices=["cutout", "mask", "color"], default="cutout",
                       help="cutout: transparent background (jpeg: on --color); mask: grey alpha; color: on --color")
    p_cut.add_argument("--color", default="#ffffff", help="background colour #rgb or #rrggbb (default white)")
    p_cut.add_argument("--format", choices=["png", "webp", "jpeg"], default="png")
    p_cut.add_argument("--quality", type=int, default=92, help="webp/jpeg quality 1..100")
    p_cut.add_argument("--refine", choices=["auto", "on", "off"],
                       help="edge refinement + colour decontamination (default: the model's, auto: photo >= 2x input)")
    p_cut.add_argument("--overwrite", action="store_true", help="cut again when the output exists (default: skip)")
    p_cut.add_argument("--max-pixels", type=int, help="larger photos fail (default: eval.images.MAX_PIXELS)")
    p_cut.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime threads")
    sub.add_parser("publish", add_help=False, help="publish dist/ to a folder or s3://bucket/prefix (see `publish --help`)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        from web_runtime.publish import main as publish_main
        return publish_main(argv[1:], prog="clearcut publish")
    args = parser.parse_args(argv)
    if args.command == "cut":  # exit codes of its own: 1 when a photo failed, 2 for bad usage
        from eval.cut import main as cut_main
        return cut_main(args)

    from models.weights import WeightsError
    try:
        if args.command == "list":
            for name, cfg in REGISTRY.items():
                mark = "*" if name == DEFAULT_MODEL else " "
                print(f"{mark} {name:<18} {cfg.architecture:<15} {cfg.preprocessing.input_size[0]:>5}px  "
                      f"{cfg.licence:<14} {cfg.description}")
        elif args.command == "pull":
            from models.weights import pull
            print(pull(get_model_config(args.model)))
        elif args.command == "export":
            from export.pipeline import ExportOptions, run_export
            run_export(ExportOptions(
                config=get_model_config(args.model),
                variants=[v for v in args.variants.split(",") if v] or None,
                weights=Path(args.weights) if args.weights else None,
                input_size=(args.size, args.size) if args.size else None,
                out_dir=Path(args.out),
                parity_images=_images(args.parity_images),
                calibration_images=_images(args.calibration_images),
                strict=args.strict,
                wasm_gate=not args.no_wasm_gate,
                engine_graphs=not args.no_engine_graphs,
            ))
    except (WeightsError, KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
