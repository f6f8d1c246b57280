"""`make export`: pull → import + reference check → export → variants → parity gate → manifest.

Every stage is a function from files to files recorded in ``build/<model>/manifest.json``.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from eval.images import load_rgb, preprocess, sample_photos
from eval.latency import cpu_latency_ms
from eval.parity import ParityGateError, compare, gate_failures
from export.manifest import BuildManifest, describe_file, gzip_size, tool_versions
from common.contract import INPUT_NAME
from common.sessions import cpu_session, run_stage, run_stages
from export.torch_to_onnx import export_onnx, export_stages, reference_alpha
from models.architectures import build_model
from models.checkpoint import load_into, load_model
from models.registry import ALL_VARIANTS, ModelConfig, Preprocessing, get_model_config
from common.files import atomic_write_bytes, sha256_file
from models.weights import pull

# An imported model must reproduce its source graph this closely on real photos.
IMPORT_MAX_ABS = 2e-3
IMPORT_MIN_IOU = 0.9999


@dataclass
class ExportOptions:
    model: str
    variants: Sequence[str] | None = None  # None: the registry's default variants
    weights: Path | None = None  # a local file instead of the registry's source
    input_size: tuple[int, int] | None = None  # None: the registry's size
    out_dir: Path = Path("build")
    parity_images: Sequence[Path] | None = None  # None: the bundled sample photos
    calibration_images: Sequence[Path] | None = None  # None: the parity images
    latency_runs: int = 3
    # Also export the registry's browser stages (graphs run one after another in the browser) and gate their
    # composition. None: when the registry lists stages; False: the single graph only.
    browser_stages: bool | None = None
    log: Callable[[str], None] = field(default=print)


def _preprocessing(config: ModelConfig, size: tuple[int, int] | None) -> Preprocessing:
    if size is None:
        return config.preprocessing
    from dataclasses import replace
    return replace(config.preprocessing, input_size=tuple(size))


def _inputs(images: Sequence[Path], pre: Preprocessing) -> list[np.ndarray]:
    return [preprocess(load_rgb(p), pre) for p in images]


def _save_state(model: torch.nn.Module, path: Path) -> None:
    """The imported weights as safetensors (upstream key names), written atomically."""
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))


def _graph_outputs(graph: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = cpu_session(graph)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


def check_import(config: ModelConfig, model: torch.nn.Module, source_onnx: Path, images: Sequence[Path],
                 pre: Preprocessing, work_dir: Path) -> dict:
    """The imported torch model against the graph it came from, on real photos: strictly against the
    source's fp32 twin (proves the weight mapping), and against the source as shipped (which may compute
    in fp16) with the same max-abs bound on the mean IoU."""
    from models.checkpoint import upcast_graph_to_fp32

    inputs, names = _inputs(images, pre), [p.name for p in images]
    ours = [reference_alpha(model, config, x) for x in inputs]
    twin = upcast_graph_to_fp32(source_onnx, work_dir / "source_fp32_twin.onnx")
    try:
        strict = compare(ours, _graph_outputs(twin, inputs), names)
    finally:
        twin.unlink(missing_ok=True)
    shipped = compare(ours, _graph_outputs(source_onnx, inputs), names)
    failures = []
    if strict["max_abs"] > IMPORT_MAX_ABS or strict["iou_worst"] < IMPORT_MIN_IOU:
        failures.append(f"vs its fp32 twin: max abs {strict['max_abs']:.3g}, worst IoU {strict['iou_worst']:.5f}")
    if shipped["max_abs"] > IMPORT_MAX_ABS or shipped["iou_mean"] < IMPORT_MIN_IOU:
        failures.append(f"vs the shipped graph: max abs {shipped['max_abs']:.3g}, mean IoU {shipped['iou_mean']:.5f}")
    if failures:
        raise ParityGateError(f"imported {config.name} does not reproduce {source_onnx.name} (limits: max abs "
                              f"{IMPORT_MAX_ABS}, IoU {IMPORT_MIN_IOU}): " + "; ".join(failures))
    return {"vs_fp32_twin": strict, "vs_shipped_graph": shipped}


def make_variant(variant: str, fp32: Path, target: Path, calibration: Sequence[Path], pre: Preprocessing,
                 config: ModelConfig, load: Callable[[Path], np.ndarray | dict] | None = None) -> None:
    """``load`` (int8 only): a calibration image → the graph's inputs (default: the preprocessed image)."""
    if variant == "fp16":
        from quantize.fp16 import to_fp16
        to_fp16(fp32, target, config.fp16_keep_fp32)
    elif variant == "int8w":
        from quantize.weight_only import to_int8_weights
        to_int8_weights(fp32, target, config.int8w_keep_fp16)
    elif variant == "int8":
        from quantize.static_int8 import to_int8_static
        to_int8_static(fp32, target, calibration, load or (lambda p: preprocess(load_rgb(p), pre)), INPUT_NAME)
    elif variant == "quint8":
        from quantize.static_int8 import to_quint8_dynamic
        to_quint8_dynamic(fp32, target)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(ALL_VARIANTS)}")


def run_export(opts: ExportOptions) -> dict:
    config = get_model_config(opts.model)
    variants = list(opts.variants or config.default_variants)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(ALL_VARIANTS)}")
    if "fp32" not in variants:
        variants.insert(0, "fp32")  # every other variant is derived from it
    pre = _preprocessing(config, opts.input_size)
    build = Path(opts.out_dir) / config.name
    build.mkdir(parents=True, exist_ok=True)
    manifest = BuildManifest(build / "manifest.json")
    log = opts.log
    log(f"{config.name}: licence {config.licence} — {config.licence_note}")

    images = list(opts.parity_images or sample_photos())
    calibration = list(opts.calibration_images or images)
    image_params = {"parity_images": {p.name: sha256_file(p) for p in images}}

    # 1. weights
    source = config.sources[0]
    if opts.weights:
        weights, weight_format = Path(opts.weights), None
        if not weights.exists():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        source_record = {"file": str(weights), "sha256": sha256_file(weights), "origin": "user-supplied"}
    else:
        weights, weight_format = pull(config), source.format
        source_record = {"file": weights.name, "sha256": sha256_file(weights), "url": source.url,
                         "container_sha256": source.sha256, "member": source.member, "format": source.format}

    # 2. import into our torch model; for graph sources, prove the import reproduces the source
    reference = build / "reference.safetensors"

    def do_import():
        model = load_model(config, weights, weight_format)
        result = {}
        if weights.suffix == ".onnx":
            check = result["import_check"] = check_import(config, model, weights, images, config.preprocessing, build)
            for label, numbers in check.items():
                log(f"  import check {label}: max abs {numbers['max_abs']:.2e}, IoU mean {numbers['iou_mean']:.6f}"
                    f" worst {numbers['iou_worst']:.6f}")
        _save_state(model, reference)
        return result

    manifest.stage("import", {"weights": weights}, {"model": config.name, **image_params}, {"reference": reference},
                   do_import, log)

    def reference_model() -> torch.nn.Module:
        return load_into(build_model(config), load_file(str(reference)), str(reference))

    # 3. torch fp32 reference outputs on the parity photos
    ref_outputs = build / "reference_outputs.npz"

    def do_reference():
        model = reference_model()
        arrays = {p.name: reference_alpha(model, config, x) for p, x in zip(images, _inputs(images, pre))}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(ref_outputs, buffer.getvalue())

    manifest.stage("reference_outputs", {"reference": reference},
                   {"preprocessing": pre.to_dict(), "output": config.output.to_dict(), **image_params},
                   {"reference_outputs": ref_outputs}, do_reference, log)

    # 4. export fp32
    files = {v: build / f"{config.name}.{v}.onnx" for v in variants}
    manifest.stage("export", {"reference": reference}, {"input_size": list(pre.input_size)}, {"fp32": files["fp32"]},
                   lambda: export_onnx(reference_model(), config, files["fp32"], pre.input_size) and None, log)

    # 4b. browser stages: the same weights cut into graphs run in sequence (see ModelConfig.browser_stages)
    stage_names = list(config.browser_stages) if opts.browser_stages is not False else []
    if opts.browser_stages and not stage_names:
        raise ValueError(f"{config.name} has no browser stages in the registry")
    stage_files = {v: {s: build / f"{config.name}.{v}.{s}.onnx" for s in stage_names} for v in variants}
    stage_list: list[dict] = []
    if stage_names:
        record = manifest.stage("export_stages", {"reference": reference},
                                {"input_size": list(pre.input_size), "stages": stage_names},
                                {f"fp32.{s}": p for s, p in stage_files["fp32"].items()},
                                lambda: {"stages": export_stages(reference_model(), config, stage_files["fp32"],
                                                                 pre.input_size)}, log)
        stage_list = record["result"]["stages"]

    def stage_calibration(index: int) -> Callable[[Path], dict]:
        """int8 calibration inputs of stage ``index``: the fp32 stages before it run on the photo."""
        earlier = [cpu_session(stage_files["fp32"][s]) for s in stage_names[:index]]
        wanted = stage_list[index]["inputs"]

        def load(path: Path) -> dict:
            values = {INPUT_NAME: preprocess(load_rgb(path), pre)}
            for session in earlier:
                run_stage(session, values)
            return {n: values[n] for n in wanted}
        return load

    # 5. variants
    for variant in variants:
        if variant == "fp32":
            continue
        params = {"calibration": {p.name: sha256_file(p) for p in calibration}} if variant == "int8" else {}
        if variant == "int8w":
            params["keep_fp16"] = list(config.int8w_keep_fp16)
        if variant == "fp16" and config.fp16_keep_fp32:
            params["keep_fp32_ops"] = list(config.fp16_keep_fp32)
        manifest.stage(f"variant:{variant}", {"fp32": files["fp32"]}, params, {variant: files[variant]},
                       lambda v=variant: make_variant(v, files["fp32"], files[v], calibration, pre, config), log)
        for index, stage in enumerate(stage_names):
            source, target = stage_files["fp32"][stage], stage_files[variant][stage]
            manifest.stage(f"variant:{variant}:{stage}", {"fp32": source}, params, {variant: target},
                           lambda v=variant, a=source, b=target, i=index: make_variant(
                               v, a, b, calibration, pre, config, stage_calibration(i) if v == "int8" else None), log)

    # 6. parity + latency of each variant against the torch reference
    refs = np.load(ref_outputs)
    inputs = _inputs(images, pre)
    parity: dict[str, dict] = {}
    failures: list[str] = []
    for variant in variants:
        def do_parity(v=variant):
            session = cpu_session(files[v])
            outs = [session.run(None, {INPUT_NAME: x})[0] for x in inputs]
            numbers = compare(outs, [refs[p.name] for p in images], [p.name for p in images])
            # the same session: a second one would double the memory of a large model (RMBG-2.0: 7 GB each)
            numbers["latency"] = cpu_latency_ms(files[v], inputs[0], runs=opts.latency_runs, session=session)
            return numbers

        record = manifest.stage(f"parity:{variant}", {"variant": files[variant], "reference_outputs": ref_outputs},
                                {"runs": opts.latency_runs}, {}, do_parity, log)
        numbers = record["result"]
        limits = config.thresholds.get(variant)
        numbers["thresholds"] = {k: v for k, v in (limits.__dict__ if limits else {}).items() if v is not None}
        numbers["failures"] = gate_failures(variant, numbers, limits) if limits else []
        numbers["passed"] = not numbers["failures"]
        failures += numbers["failures"]
        parity[variant] = numbers
        if stage_names:
            paths = [stage_files[variant][s] for s in stage_names]

            def do_stage_parity(paths=paths):
                outs = run_stages(paths, inputs)  # each stage opened once, released before the next
                return compare(outs, [refs[p.name] for p in images], [p.name for p in images])

            record = manifest.stage(f"parity:{variant}:stages", {**{s: p for s, p in zip(stage_names, paths)},
                                                                 "reference_outputs": ref_outputs},
                                    {}, {}, do_stage_parity, log)
            staged = dict(record["result"])
            staged["failures"] = [f"{f} (browser stages)" for f in
                                  (gate_failures(variant, staged, limits) if limits else [])]
            staged["passed"] = not staged["failures"]
            failures += staged["failures"]
            numbers["stages"] = staged

    atomic_write_bytes(build / "parity.json", (json.dumps(parity, indent=2) + "\n").encode())
    summary_variants = {}
    previous = manifest.data.get("variants", {})
    for variant in variants:
        info = describe_file(files[variant])
        known = previous.get(variant, {})
        # gzip -9 of a 176 MB file takes seconds: reuse the figure while the file is unchanged
        same = known.get("sha256") == info["sha256"] and "gzip_bytes" in known
        info["gzip_bytes"] = known["gzip_bytes"] if same else gzip_size(files[variant])
        p = parity[variant]
        info["parity"] = {k: p[k] for k in ("max_abs", "mean_abs", "iou_mean", "iou_worst", "worst_image", "passed")}
        info["cpu_latency_ms"] = p["latency"]["median_ms"]
        if stage_names:
            sp = p["stages"]
            info["stages"] = [{**describe_file(stage_files[variant][s["name"]]), "name": s["name"],
                               "inputs": s["inputs"], "outputs": s["outputs"]} for s in stage_list]
            info["stages_parity"] = {k: sp[k] for k in ("max_abs", "mean_abs", "iou_mean", "iou_worst",
                                                         "worst_image", "passed")}
        summary_variants[variant] = info
    manifest.data.update({
        "model": {"name": config.name, "architecture": config.architecture, "description": config.description,
                  "licence": config.licence, "licence_note": config.licence_note},
        "source": source_record,
        "preprocessing": pre.to_dict(),
        "output": {**config.output.to_dict(), "input_name": INPUT_NAME, "output_name": "alpha"},
        "variants": summary_variants,
        "parity_images": [p.name for p in images],
        "tools": tool_versions(),
        "gate": {"passed": not failures, "failures": failures},
    })
    manifest.save()
    log(format_table(manifest.data))
    if failures:
        raise ParityGateError("parity gate failed:\n  " + "\n  ".join(failures))
    return manifest.data


def format_table(data: dict) -> str:
    rows = [f"{'variant':<8} {'MB':>8} {'gzip MB':>8} {'max abs':>9} {'IoU mean':>9} {'IoU worst':>9} "
            f"{'CPU ms':>8}  gate"]
    for name, v in data["variants"].items():
        p = v["parity"]
        rows.append(f"{name:<8} {v['bytes'] / 1e6:>8.2f} {v['gzip_bytes'] / 1e6:>8.2f} {p['max_abs']:>9.2e} "
                    f"{p['iou_mean']:>9.5f} {p['iou_worst']:>9.5f} {v['cpu_latency_ms']:>8.0f}  "
                    f"{'pass' if p['passed'] else 'FAIL'}")
    return "\n".join(rows)
