"""`make export`: pull → import + reference check → export → variants → parity gate → manifest.

The export is a plan of steps built from ``config × variants × graphs`` (graphs: the whole model, then the
registry's browser stages); each step is a function from files to files recorded in
``build/<model>/manifest.json`` and skipped when its inputs, parameters and tools are unchanged.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from common.contract import INPUT_NAME, OUTPUT_NAME
from common.files import atomic_write_bytes, file_hashes, sha256_file
from common.onnx_graph import runtime_session_config, webgpu_problems
from common.probe import PROBE_VERSION, probe_input, probe_record
from common.sessions import cpu_session, run_stage
from eval.images import calibration_photos, gate_photos, load_rgb, preprocess
from eval.latency import cpu_latency_ms
from eval.parity import ParityGateError, compare, gate_failures
from export.manifest import BuildManifest, describe_file, gzip_size, tool_versions
from export.torch_to_onnx import export_onnx, export_stages, reference_alpha
from models.architectures import build_model
from models.checkpoint import load_into, load_model
from models.registry import CODED_VARIANTS, ModelConfig, Preprocessing
from models.weights import pull
from quantize.engine_graphs import ENGINE_SESSION_CONFIG
from quantize.recipes import ALL_VARIANTS, BASE_VARIANT, ENGINE_GRAPHS, Calibration, get_recipe

# An imported model must reproduce its source graph this closely on real photos.
IMPORT_MAX_ABS = 2e-3
IMPORT_MIN_IOU = 0.9999
IMPORT_CHECK_PHOTOS = 6  # the first gate photos (PyPI packages' photos): proof of the weight mapping, not a gate
PARITY_FIELDS = ("max_abs", "mean_abs", "iou_mean", "iou_worst", "worst_image", "passed")
# The runtime's check of an engine's probe result: the largest mean abs difference of the pooled alpha it accepts
# when the registry sets no mean-abs threshold for the variant (float kernels differ by ~1e-5; a wrong result by far
# more).
DEFAULT_PROBE_TOLERANCE = 0.006
SUMMARY_FIELDS = ("max_abs", "mean_abs", "iou_mean", "iou_p10", "iou_worst", "worst_image", "worst_images")


@dataclass
class ExportOptions:
    config: ModelConfig  # the CLI resolves a model name through the registry; tests pass their own configs
    variants: Sequence[str] | None = None  # None: the registry's default variants
    weights: Path | None = None  # a local file instead of the registry's source
    input_size: tuple[int, int] | None = None  # None: the registry's size
    out_dir: Path = Path("build")
    parity_images: Sequence[Path] | None = None  # None: eval.images.gate_photos (29 photos)
    calibration_images: Sequence[Path] | None = None  # None: eval.images.calibration_photos (data/calib-photos)
    # Also run every variant in onnxruntime-web's WASM engine (the npm build the bundle ships, under Node, a fixed
    # thread count) on the gate's photos; its numbers decide (WASM arithmetic does not depend on the CPU).
    wasm_gate: bool = True
    wasm_threads: int = 2
    strict: bool = False  # any failed variant fails the export (else: it is left out of dist/ and reported)
    # Build each variant's engine graphs (quantize.recipes.ENGINE_GRAPHS: the float-activation graph WebGPU runs for
    # a coded variant), gate them natively and check in Chromium that WebGPU runs every node.
    engine_graphs: bool = True
    latency_runs: int = 3
    # Also export the registry's browser stages (graphs run one after another in the browser) and gate their
    # composition. None: when the registry lists stages; False: the single graph only.
    browser_stages: bool | None = None
    log: Callable[[str], None] = field(default=print)


@dataclass(frozen=True)
class Step:
    """One unit of the export: reads ``inputs``, writes ``outputs``; ``params`` and the inputs' hashes key it."""

    name: str
    inputs: dict[str, Path]
    params: dict
    outputs: dict[str, Path]
    run: Callable[[], dict | None]


@dataclass(frozen=True)
class Composition:
    """Graphs run in sequence to get the alpha map: the whole model (one graph) or its browser stages."""

    suffix: str  # "" for the whole graph, ":stages" for the browser stages (manifest step names)
    graphs: tuple[str, ...]  # graph names, in run order; "" is the whole model


WHOLE = ""


def resolve_variants(config: ModelConfig, requested: Sequence[str] | None) -> list[str]:
    variants = list(requested or config.default_variants)
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(ALL_VARIANTS)}")
    if BASE_VARIANT not in variants:
        variants.insert(0, BASE_VARIANT)  # every other variant is derived from it
    return variants


class Build:
    """What the steps share: the model, its build folder, the photos, and the path of every graph."""

    def __init__(self, opts: ExportOptions):
        self.config = config = opts.config
        self.opts, self.log = opts, opts.log
        self.variants = resolve_variants(config, opts.variants)
        self.pre: Preprocessing = (replace(config.preprocessing, input_size=tuple(opts.input_size))
                                   if opts.input_size else config.preprocessing)
        self.dir = Path(opts.out_dir) / config.name
        self.images = list(opts.parity_images or gate_photos())
        self.calibration_images = list(opts.calibration_images or calibration_photos())
        self.reference = self.dir / "reference.safetensors"
        self.reference_outputs = self.dir / "reference_outputs.npz"
        stages = tuple(config.browser_stages) if opts.browser_stages is not False else ()
        if opts.browser_stages and not stages:
            raise ValueError(f"{config.name} has no browser stages in the registry")
        self.stages = stages
        self.compositions = [Composition("", (WHOLE,))] + ([Composition(":stages", stages)] if stages else [])
        self.stage_io: list[dict] = []  # the browser stages' inputs/outputs, from the export_stages step
        self.photo_sets = self._photo_sets()
        if opts.wasm_gate and (reason := _wasm().wasm_available()):
            raise RuntimeError(f"the WASM gate cannot run: {reason}")
        # variant → engine → the name of the graph that engine runs (a recipe of its own)
        self.engine_graphs: dict[str, dict[str, str]] = {
            v: {engine: recipe.name for engine, recipe in ENGINE_GRAPHS[v].items()}
            for v in self.variants if opts.engine_graphs and v in ENGINE_GRAPHS}
        if self.engine_graphs and (reason := _placement().placement_available()):
            raise RuntimeError(f"the WebGPU graphs' placement check cannot run: {reason} "
                               "(or export without engine graphs: --no-engine-graphs)")

    def _photo_sets(self) -> dict[str, dict[str, str]]:
        """Every photo set by name → sha256; refuses a gate photo that also calibrates or codes a variant (the
        gate would judge a variant on a photo that shaped it)."""
        sets = {"gate": file_hashes(self.images), "int8_calibration": file_hashes(self.calibration_images)}
        if any(v in CODED_VARIANTS for v in self.variants):
            from quantize.codec_build import codec_photos, sensitivity_photos
            codec = codec_photos(self.calibration_images)
            sets["codec_statistics"] = file_hashes(codec)
            sets["codec_sensitivity"] = file_hashes(sensitivity_photos(codec))
        gate = {digest: name for name, digest in sets["gate"].items()}
        shared = sorted({f"{gate[d]} ({kind})" for kind, photos in sets.items() if kind != "gate"
                         for d in photos.values() if d in gate})
        if shared:
            raise ValueError("the parity gate's photos must not calibrate or code a variant; shared: "
                             + ", ".join(shared) + " (pass --parity-images and --calibration-images apart)")
        return sets
    @property
    def graphs(self) -> tuple[str, ...]:
        return (WHOLE, *self.stages)

    def path(self, variant: str, graph: str = WHOLE) -> Path:
        return self.dir / ".".join(filter(None, (self.config.name, variant, graph, "onnx")))

    def probe_path(self, variant: str) -> Path:
        """The graph's alpha on the probe input (float32 .npy), written by its parity step."""
        return self.dir / f"{self.config.name}.{variant}.probe.npy"

    def engines_container(self, variant: str) -> Path:
        """The coded variant's container with its engine graphs."""
        return self.dir / f"{self.config.name}.{variant}.engines.ccw"

    def inputs(self) -> list[np.ndarray]:
        return [preprocess(load_rgb(p), self.pre) for p in self.images]

    def reference_model(self) -> torch.nn.Module:
        return load_into(build_model(self.config), load_file(str(self.reference)), str(self.reference))

    def calibration(self, graph: str) -> Calibration:
        """int8 calibration of ``graph``: the photo preprocessed, run through the fp32 graphs before it."""
        index = self.graphs.index(graph)
        earlier = list(self.stages[:index - 1]) if graph != WHOLE else []
        state: dict = {}

        def load(path: Path) -> dict[str, np.ndarray]:
            if "sessions" not in state:  # on the first photo: the stage list exists once the stages are exported
                state["sessions"] = [cpu_session(self.path(BASE_VARIANT, s)) for s in earlier]
                state["wanted"] = self.stage_io[index - 1]["inputs"] if graph != WHOLE else [INPUT_NAME]
            values = {INPUT_NAME: preprocess(load_rgb(path), self.pre)}
            for session in state["sessions"]:
                run_stage(session, values)
            return {n: values[n] for n in state["wanted"]}

        return Calibration(self.calibration_images, load, self.photo_sets["int8_calibration"])


# ---------------------------------------------------------------- the steps

def import_step(build: Build, weights: Path, weight_format: str | None) -> Step:
    """Import the weights into our torch model; for graph sources, prove the import reproduces the source."""
    def run() -> dict:
        model = load_model(build.config, weights, weight_format)
        result = {}
        if weights.suffix == ".onnx":
            check = result["import_check"] = check_import(build.config, model, weights, build.images[:IMPORT_CHECK_PHOTOS],
                                                          build.config.preprocessing, build.dir)
            for label, numbers in check.items():
                build.log(f"  import check {label}: max abs {numbers['max_abs']:.2e}, IoU mean "
                          f"{numbers['iou_mean']:.6f} worst {numbers['iou_worst']:.6f}")
        _save_state(model, build.reference)
        return result

    return Step("import", {"weights": weights},
                {"model": build.config.name, "check_photos": file_hashes(build.images[:IMPORT_CHECK_PHOTOS])},
                {"reference": build.reference}, run)


def reference_outputs_step(build: Build) -> Step:
    """The torch fp32 reference's alpha on every parity photo: what every variant is gated against."""
    def run() -> None:
        model = build.reference_model()
        arrays = {p.name: reference_alpha(model, build.config, x) for p, x in zip(build.images, build.inputs())}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(build.reference_outputs, buffer.getvalue())

    return Step("reference_outputs", {"reference": build.reference},
                {"preprocessing": build.pre.to_dict(), "output": build.config.output.to_dict(), **_image_params(build)},
                {"reference_outputs": build.reference_outputs}, run)


def export_steps(build: Build) -> list[Step]:
    """torch → the fp32 whole graph, and the browser stages (exported together: each stage's example inputs
    are the earlier stages' outputs). Each step also records the WebGPU checks of what it wrote."""
    size = list(build.pre.input_size)

    def whole() -> dict:
        path = build.path(BASE_VARIANT)
        export_onnx(build.reference_model(), build.config, path, build.pre.input_size)
        return {"webgpu_problems": webgpu_problems(path)}

    def stages() -> dict:
        paths = {s: build.path(BASE_VARIANT, s) for s in build.stages}
        described = export_stages(build.reference_model(), build.config, paths, build.pre.input_size)
        return {"stages": described, "webgpu_problems": [f"{s}: {p}" for s in build.stages
                                                         for p in webgpu_problems(paths[s])]}

    steps = [Step("export", {"reference": build.reference}, {"input_size": size, "checks": ["webgpu"]},
                  {BASE_VARIANT: build.path(BASE_VARIANT)}, whole)]
    if build.stages:
        steps.append(Step("export_stages", {"reference": build.reference},
                          {"input_size": size, "stages": list(build.stages), "checks": ["webgpu"]},
                          {f"{BASE_VARIANT}.{s}": build.path(BASE_VARIANT, s) for s in build.stages}, stages))
    return steps


def variant_step(build: Build, variant: str, graph: str) -> Step:
    """A recipe applied to one graph of its source variant (fp32, or the variant an engine graph is made of)."""
    recipe = get_recipe(variant)
    source, target = build.path(recipe.source, graph), build.path(variant, graph)
    calibration = build.calibration(graph)
    return Step(":".join(filter(None, ("variant", variant, graph))), {recipe.source: source},
                recipe.params(build.config, calibration), {variant: target},
                lambda: recipe.make(source, target, build.config, calibration))


def parity_step(build: Build, variant: str, composition: Composition, probe: bool = False) -> Step:
    """The variant's graphs, run in sequence on the parity photos, against the torch reference; the whole
    graph's session also times CPU latency (a second session would double a large model's memory). ``probe``:
    also the graph's alpha on the probe input (common/probe.py), which the runtime checks an engine against."""
    paths = [build.path(variant, g) for g in composition.graphs]
    timed = composition.graphs == (WHOLE,)

    def run() -> dict:
        references = np.load(build.reference_outputs)
        names = [p.name for p in build.images]
        values = [{INPUT_NAME: x} for x in build.inputs()]
        outputs: list[np.ndarray] = []
        latency = None
        for path in paths:  # one session at a time, as the browser runs stages
            session = cpu_session(path)
            outputs = [run_stage(session, v)[0] for v in values]
            if timed:
                latency = cpu_latency_ms(path, values[0][INPUT_NAME], runs=build.opts.latency_runs, session=session)
            if probe:
                pre = build.pre
                probe_alpha = run_stage(session, {INPUT_NAME: probe_input(pre.input_size, pre.mean, pre.std)})[0]
            del session
        numbers = compare(outputs, [references[n] for n in names], names)
        if probe:
            buffer = io.BytesIO()
            np.save(buffer, probe_alpha.astype(np.float32))
            atomic_write_bytes(build.probe_path(variant), buffer.getvalue())
        return {**numbers, "latency": latency} if timed else numbers

    inputs = {"variant": paths[0]} if timed else dict(zip(composition.graphs, paths))
    return Step(f"parity:{variant}{composition.suffix}", {**inputs, "reference_outputs": build.reference_outputs},
                {"summary": list(SUMMARY_FIELDS), **({"runs": build.opts.latency_runs} if timed else {}),
                 **({"probe": PROBE_VERSION} if probe else {})},
                {"probe": build.probe_path(variant)} if probe else {}, run)


def placement_step(build: Build) -> Step:
    """Every WebGPU engine graph in Chromium's WebGPU engine with CPU fallback disabled: does each run every
    node on the GPU (eval/webgpu_placement.py; a fresh browser per graph, in a child process)?"""
    graphs = [g for engines in build.engine_graphs.values() for e, g in engines.items() if e == "webgpu"]
    paths = {g: build.path(g) for g in graphs}

    def run() -> dict:
        found = _placement().check_placement([(paths[g], ENGINE_SESSION_CONFIG["webgpu"]) for g in graphs])
        for g, result in zip(graphs, found):
            build.log(f"  {g}: {'every node on WebGPU' if result['all_on_webgpu'] else 'NOT all on WebGPU: ' + str(result['message'])}")
        return dict(zip(graphs, found))

    return Step("webgpu_placement", paths, {"engine": _placement().ENGINE, "session_config": ENGINE_SESSION_CONFIG["webgpu"]},
                {}, run)


def container_step(build: Build, variant: str) -> Step:
    """The variant's `.ccw` container with its engine graphs added (one download, a graph per engine: the
    coded weights are stored once, each graph's skeleton beside the others)."""
    graphs = {engine: build.path(g) for engine, g in build.engine_graphs[variant].items()}
    single, target = build.path(variant).with_suffix(".ccw"), build.engines_container(variant)

    def run() -> dict:
        from quantize import ccw
        from quantize.codec_build import _brotli_size
        extra = {engine: path.read_bytes() for engine, path in graphs.items()}
        container = ccw.with_graphs(single.read_bytes(), extra)
        for engine, data in extra.items():
            if ccw.decode(container, engine) != data:
                raise RuntimeError(f"{target.name}: graph {engine} does not decode to {graphs[engine].name}")
        atomic_write_bytes(target, container)
        return {"container": {"path": target.name, "sha256": sha256_file(target), "bytes": len(container),
                              "brotli_bytes": _brotli_size(container), **ccw.summary(container)}}

    return Step(f"container:{variant}", {"container": single, **{f"graph:{e}": p for e, p in graphs.items()}},
                {"graphs": sorted(graphs)}, {"container": target}, run)


def _placement():
    """eval.webgpu_placement, imported when engine graphs are built."""
    from eval import webgpu_placement
    return webgpu_placement


def wasm_parity_step(build: Build, variant: str) -> Step:
    """The variant's whole graph in onnxruntime-web's WASM engine under Node (the engine and session settings the
    browser runtime uses, a fixed thread count) on the parity photos, against the torch reference."""
    path = build.path(variant)

    def run() -> dict:
        references = np.load(build.reference_outputs)
        names = [p.name for p in build.images]
        outputs = _wasm().run_wasm(path, build.inputs(), threads=build.opts.wasm_threads,
                           session_config=runtime_session_config(path),
                           progress=lambda i, n: build.log(f"  wasm {variant}: {i}/{n} photos") if i % 10 == 0 else None)
        return compare(outputs, [references[n] for n in names], names)

    return Step(f"parity_wasm:{variant}", {"variant": path, "reference_outputs": build.reference_outputs},
                {"engine": f"onnxruntime-web {_wasm().WASM_ENGINE_VERSION}", "threads": build.opts.wasm_threads,
                 "summary": list(SUMMARY_FIELDS)}, {}, run)


def _wasm():
    """eval.wasm_engine, imported when the WASM gate runs."""
    from eval import wasm_engine
    return wasm_engine


def plan(build: Build, weights: Path, weight_format: str | None) -> list[Step]:
    """Every step of the export, in order. Variant and parity steps of every graph come from the same loop."""
    steps = [import_step(build, weights, weight_format), reference_outputs_step(build), *export_steps(build)]
    steps += [variant_step(build, v, g) for v in build.variants if v != BASE_VARIANT for g in build.graphs]
    steps += [parity_step(build, v, c) for v in build.variants for c in build.compositions]
    if build.opts.wasm_gate:
        steps += [wasm_parity_step(build, v) for v in build.variants]
    engine_graphs = [g for engines in build.engine_graphs.values() for g in engines.values()]
    steps += [variant_step(build, g, WHOLE) for g in engine_graphs]
    steps += [parity_step(build, g, build.compositions[0], probe=True) for g in engine_graphs]
    if engine_graphs:
        steps += [placement_step(build), *(container_step(build, v) for v in build.engine_graphs)]
    return steps


# ---------------------------------------------------------------- running the plan

def run_export(opts: ExportOptions) -> dict:
    build = Build(opts)
    build.dir.mkdir(parents=True, exist_ok=True)
    manifest = BuildManifest(build.dir / "manifest.json")
    config = build.config
    build.log(f"{config.name}: licence {config.licence} — {config.licence_note}")
    weights, weight_format, source_record = _weights(build)

    results: dict[str, dict] = {}
    for step in plan(build, weights, weight_format):
        record = manifest.stage(step.name, step.inputs, step.params, step.outputs, step.run, build.log)
        results[step.name] = record["result"]
        if step.name == "export_stages":
            build.stage_io = record["result"]["stages"]

    parity, failures, fatal = gate(build, results)
    atomic_write_bytes(build.dir / "parity.json", (json.dumps(parity, indent=2) + "\n").encode())
    manifest.data.update({
        "model": model_info(config),
        "source": source_record,
        "preprocessing": build.pre.to_dict(),
        "output": output_info(config),
        "variants": {v: describe_variant(build, v, parity[v], manifest.data.get("variants", {}).get(v, {}), results)
                     for v in build.variants},
        "parity_images": [p.name for p in build.images],
        "photo_sets": build.photo_sets,
        "tools": tool_versions(),
        "gate": {"passed": not failures, "failures": failures,
                 "engine": "onnxruntime-web wasm" if build.opts.wasm_gate else "onnxruntime native",
                 "failed_variants": [v for v in build.variants if not parity[v]["passed"]],
                 "margins": {v: {k: x for k, x in vars(m).items() if x is not None}
                             for v, m in config.gate_margins.items() if v in build.variants}},
    })
    manifest.save()
    build.log(format_table(manifest.data))
    for variant, engines in build.engine_graphs.items():
        for engine, numbers in parity[variant]["engines"].items():
            placed = numbers["placement"]
            build.log(f"{variant} {engine} graph ({numbers['graph']}, native): IoU mean {numbers['iou_mean']:.5f} "
                      f"p10 {numbers['iou_p10']:.5f} mean abs {numbers['mean_abs']:.5f}"
                      + ("" if placed is None else ", every node on WebGPU" if placed["all_on_webgpu"] else ", NODES ON THE CPU")
                      + (" — pass" if numbers["passed"] else " — FAIL"))
    for line in reproduction_report(config, manifest.data["variants"]):
        build.log(line)
    usable = [v for v in config.bundle_default_order if v in build.variants and parity[v]["passed"]]
    if fatal or (failures and opts.strict) or not usable:
        why = ("" if fatal or opts.strict else
               f"\n  no variant of the bundle's default order ({', '.join(config.bundle_default_order)}) passed")
        raise ParityGateError("parity gate failed:\n  " + "\n  ".join(failures) + why)
    if failures:
        build.log(failure_banner(failures, parity))
    return manifest.data


def failure_banner(failures: list[str], parity: dict) -> str:
    """What the export prints when some variants failed and the others still ship: each failure and the photos
    the failed variant did worst on."""
    lines = ["", "!" * 78, "PARITY GATE: these FAILED and are left out of dist/ (a variant, or one engine's graph of it: the "
             "variant then runs its WASM graph there); STRICT=1 makes this an error:"]
    lines += [f"  {f}" for f in failures]
    for variant, numbers in parity.items():
        if not numbers["passed"]:
            lines.append(f"  {variant} worst photos ({numbers['engine']}): {', '.join(numbers['worst_images'])}")
        for engine, graph in numbers.get("engines", {}).items():
            if not graph["passed"]:
                lines.append(f"  {variant} {engine} graph worst photos (native): {', '.join(graph['worst_images'])}")
    return "\n".join(lines + ["!" * 78])


def reproduction_report(config: ModelConfig, variants: dict) -> list[str]:
    """Whether this build's files are the bytes the README's numbers were measured on (the registry's
    ``measured_sha256``)."""
    lines = []
    for variant, expected in config.measured_sha256.items():
        got = variants.get(variant, {}).get("sha256")
        if got is None:
            continue
        if got == expected:
            lines.append(f"{variant}: reproduced the measured bytes (sha256 {got[:12]}…): the README's numbers are this file's")
        else:
            lines.append(f"{variant}: NOT the measured bytes (sha256 {got[:12]}…, measured {expected[:12]}…): this "
                         "machine's kernels gave other bytes; the gate above judged this file")
    return lines


def gate(build: Build, results: dict[str, dict]) -> tuple[dict[str, dict], list[str], list[str]]:
    """Every variant's parity numbers with its registry thresholds and verdict (the browser stages' under
    ``stages``), all failures (parity below the thresholds, graphs WebGPU would reject), and the fatal ones
    among them (the graph problems, which no variant escapes).

    The whole graph's verdict is taken on the WASM engine's numbers when the WASM gate ran (what users run;
    native numbers are recorded beside them under ``native``); ``clear`` says whether the variant also passes
    its thresholds moved by the registry's ``gate_margins`` for it (only such a variant becomes the bundle's
    default)."""
    fatal = [f"{name}: WebGPU: {problem}" for name in ("export", "export_stages")
             for problem in results.get(name, {}).get("webgpu_problems", [])]
    failures = list(fatal)
    parity: dict[str, dict] = {}
    for variant in build.variants:
        limits = build.config.thresholds.get(variant)
        for composition in build.compositions:
            native = dict(results[f"parity:{variant}{composition.suffix}"])
            wasm = results.get(f"parity_wasm:{variant}") if not composition.suffix else None
            numbers = dict(wasm) if wasm else dict(native)
            label = f"{variant} (wasm)" if wasm else variant
            found = gate_failures(label, numbers, limits) if limits else []
            if not composition.suffix:
                numbers["engine"] = "wasm" if wasm else "native"
                numbers["latency"] = native.get("latency")
                numbers["native"] = {k: native.get(k) for k in SUMMARY_FIELDS}
                numbers["native_passed"] = not (gate_failures(variant, native, limits) if limits else [])
                numbers["native_images"] = native.get("images")
                if wasm:
                    numbers["wasm"] = {k: wasm.get(k) for k in SUMMARY_FIELDS}
                # the moved limits are stricter, so clearing them implies passing
                margin = build.config.gate_margins.get(variant)
                numbers["clear"] = not (gate_failures(label, numbers, limits.tightened(margin) if margin else limits)
                                        if limits else [])
            if composition.suffix:
                numbers["failures"] = [f"{f} (browser stages)" for f in found]
            else:
                numbers["thresholds"] = {k: v for k, v in (limits.__dict__ if limits else {}).items() if v is not None}
                numbers["failures"] = found
            numbers["passed"] = not numbers["failures"]
            failures += numbers["failures"]
            if composition.suffix:
                parity[variant]["stages"] = numbers
                if numbers["failures"]:  # a variant ships as its stages: failing them fails it
                    parity[variant].update(passed=False, clear=False)
            else:
                parity[variant] = numbers
    for variant, engines in build.engine_graphs.items():
        limits = build.config.thresholds.get(variant)
        parity[variant]["engines"] = {}
        for engine, graph in engines.items():
            numbers = dict(results[f"parity:{graph}"])
            found = gate_failures(f"{variant} {engine} graph", numbers, limits) if limits else []
            placement = results.get("webgpu_placement", {}).get(graph) if engine == "webgpu" else None
            if placement is not None and not placement["all_on_webgpu"]:
                found.append(f"{variant} {engine} graph: not every node runs on WebGPU ({placement['message']})")
            numbers.update(graph=graph, engine="native", placement=placement, failures=found, passed=not found)
            failures += found  # the variant still ships for the other engines; this engine runs it as WASM does
            parity[variant]["engines"][engine] = numbers
    return parity, failures, fatal


def model_info(config: ModelConfig) -> dict:
    """The manifests' ``model`` object (common.manifest_schema.ModelInfo)."""
    return {"name": config.name, "architecture": config.architecture, "description": config.description,
            "licence": config.licence, "licence_note": config.licence_note}


def output_info(config: ModelConfig) -> dict:
    """The manifests' ``output`` object (common.manifest_schema.Output): what the graph returns, by name."""
    return {**config.output.to_dict(), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}


def describe_variant(build: Build, variant: str, parity: dict, previous: dict, results: dict | None = None) -> dict:
    """The build manifest's entry of one variant: file, sizes, parity, CPU latency, its browser stages and its
    engine graphs (each: file, session config, gate numbers and verdict, WebGPU placement, probe)."""
    path = build.path(variant)
    info = describe_file(path)
    # gzip -9 of a 176 MB file takes seconds: reuse the figure while the file is unchanged
    same = previous.get("sha256") == info["sha256"] and "gzip_bytes" in previous
    info["gzip_bytes"] = previous["gzip_bytes"] if same else gzip_size(path)
    info["parity"] = {k: parity[k] for k in PARITY_FIELDS}
    info["gate"] = {k: parity[k] for k in ("engine", "clear", "native_passed", "iou_p10", "worst_images", "native",
                                            "wasm", "thresholds") if k in parity}
    info["cpu_latency_ms"] = parity["latency"]["median_ms"]
    if build.stages:
        info["stages"] = [{**describe_file(build.path(variant, s["name"])), "name": s["name"],
                           "inputs": s["inputs"], "outputs": s["outputs"]} for s in build.stage_io]
        info["stages_parity"] = {k: parity["stages"][k] for k in PARITY_FIELDS}
    if variant in build.engine_graphs:
        limits = build.config.thresholds.get(variant)
        tolerance = limits.mean_abs if limits and limits.mean_abs else DEFAULT_PROBE_TOLERANCE
        info["engines"] = {}
        for engine, graph in build.engine_graphs[variant].items():
            numbers, path = parity["engines"][engine], build.path(graph)
            info["engines"][engine] = {
                **describe_file(path), "graph": engine, "session_config": ENGINE_SESSION_CONFIG[engine],
                "parity": {k: numbers.get(k) for k in SUMMARY_FIELDS}, "passed": numbers["passed"],
                "failures": numbers["failures"], "placement": numbers["placement"],
                "probe": probe_record(np.load(build.probe_path(graph)), tolerance)}
        info["engines_container"] = ((results or {}).get(f"container:{variant}") or {}).get("container")
    return info


def _weights(build: Build) -> tuple[Path, str | None, dict]:
    """The weights file to import, its format (None: guess from the file) and its provenance record."""
    if build.opts.weights:
        weights = Path(build.opts.weights)
        if not weights.exists():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        return weights, None, {"file": str(weights), "sha256": sha256_file(weights), "origin": "user-supplied"}
    source = build.config.sources[0]
    weights = pull(build.config)
    return weights, source.format, {"file": weights.name, "sha256": sha256_file(weights), "url": source.url,
                                    "container_sha256": source.sha256, "member": source.member,
                                    "format": source.format}


def _image_params(build: Build) -> dict:
    return {"parity_images": file_hashes(build.images)}


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

    inputs, names = [preprocess(load_rgb(p), pre) for p in images], [p.name for p in images]
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


def format_table(data: dict) -> str:
    width = max([8, *map(len, data["variants"])])
    rows = [f"{'variant':<{width}} {'MB':>8} {'gzip MB':>8} {'max abs':>9} {'IoU mean':>9} {'IoU worst':>9} "
            f"{'CPU ms':>8}  gate"]
    for name, v in data["variants"].items():
        p = v["parity"]
        rows.append(f"{name:<{width}} {v['bytes'] / 1e6:>8.2f} {v['gzip_bytes'] / 1e6:>8.2f} {p['max_abs']:>9.2e} "
                    f"{p['iou_mean']:>9.5f} {p['iou_worst']:>9.5f} {v['cpu_latency_ms']:>8.0f}  "
                    f"{'pass' if p['passed'] else 'FAIL'}")
    return "\n".join(rows)
