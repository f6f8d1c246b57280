"""`clearcut cut`: remove the background of photo files on this machine with a built variant, the way the
browser runtime cuts them (web_runtime/src/worker.js), without a browser and without torch.

The model comes from a build folder (`build/<model>/`, its manifest names each variant's ONNX file and sha256)
or a bundle (`dist/`: each variant's chunks are read, checked against their sha256, joined, checked against
the graph's sha256 and run from memory with the manifest's session settings; a coded variant's chunks are a
weight container, decoded with quantize.ccw and checked the same way). A build runs its variant's whole
graph; a bundle's staged variant runs stage by stage (``run_stages``), its sessions opened once for all photos
(native memory is not the browser's 4 GB WASM heap). A photo is cut like this:

1. decode with ``eval.images.load_rgb`` (EXIF orientation, the pixel limit, ``Image.convert('RGB')``: what the
   model sees), preprocess as the manifest says, run the graph (or the bundle's stages, in order);
2. alpha bilinearly to the photo's size; edge refinement and colour decontamination by ``eval.refine`` when
   ``want_refine`` says so (``auto``: the mask is upsampled at least 2x, as in the browser);
3. output alpha = min(the photo's own alpha, the mask), so transparent parts of the input stay transparent;
4. ``cutout`` (RGBA; in JPEG, which has no alpha, composited on ``color`` like the browser does), ``mask``
   (8-bit grey) or ``color`` (composited on ``color``), encoded and written atomically.

Outputs are ``<out>/<input's path relative to what was named, without suffix>.<format>``: a file named on the
command line keeps its name, a folder's images keep their path below it (subfolders only with ``-r``), a glob's
matches their path below the pattern's leading folders without wildcards. Two inputs with the same output name: the
first (in command-line order, files sorted within a folder) is cut, the other fails naming both. No metadata
(EXIF, GPS) is copied: the orientation is applied to the pixels.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from tqdm import tqdm

from common.files import atomic_write_bytes, sha256_file
from common.manifest_schema import parse_bundle_manifest, to_json
from common.sessions import cpu_session, run_stages
from eval.images import MAX_PIXELS, ImageError, alpha_to_image_size, load_rgb, preprocess
from eval.refine import load_params, refine, want_refine
from models.registry import DEFAULT_MODEL, Preprocessing
from quantize import ccw
from web_runtime.build_bundle import default_variant

DEFAULT_BUILD = Path("build") / DEFAULT_MODEL
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
OUTPUTS = ("cutout", "mask", "color")
FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
REFINE = {"auto": "auto", "on": True, "off": False, None: None}  # None: the model's default
WILDCARDS = "*?["


class UsageError(ValueError):
    """Arguments that cannot work (exit code 2)."""


class ModelError(RuntimeError):
    """The build or bundle cannot be used: missing files, a failed integrity check (exit code 1)."""


@dataclass(frozen=True)
class Model:
    """A variant ready to cut: its graphs' sessions (run in order) and the numbers it came with."""

    label: str
    pre: Preprocessing
    refine_params: dict
    sessions: tuple

    def alpha(self, rgb: np.ndarray) -> np.ndarray:
        """The model's alpha at the photo's size (HxW float32 in [0, 1])."""
        small = run_stages(self.sessions, preprocess(rgb, self.pre))
        return alpha_to_image_size(small[0, 0], rgb.shape[:2])


def _pick(variants: dict, wanted: str | None, default: str, where: Path) -> str:
    name = wanted or default
    if name not in variants:
        raise UsageError(f"{where}: no variant {name!r}; it has {', '.join(variants)}")
    return name


def load_build(build_dir: Path, variant: str | None = None, threads: int = 2) -> Model:
    """A variant of a pipeline build (the whole graph; the default variant is the one the bundle would ship)."""
    manifest_path = Path(build_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"{manifest_path} missing: run `make export` (or name a bundle with --bundle)")
    build = _json(manifest_path)
    variants = build.get("variants") or {}
    passed = {v: e for v, e in variants.items() if (e.get("parity") or {}).get("passed", True)}
    if not passed and not variant:
        raise ModelError(f"{manifest_path}: no variant passed the parity gate; name one with --variant")
    name = _pick(variants, variant, default_variant(passed, (build.get("model") or {}).get("name", "")) if passed else "", build_dir)
    path = Path(build_dir) / variants[name]["path"]
    if not path.is_file() or sha256_file(path) != variants[name]["sha256"]:
        raise ModelError(f"{path} is missing or differs from its sha256 in {manifest_path}: re-run the export")
    return Model(f"{build['model']['name']} {name} (build {build_dir})",
                 Preprocessing.from_dict(build["preprocessing"]), load_params(), (cpu_session(path, threads),))


def load_bundle(bundle_dir: Path, variant: str | None = None, threads: int = 2) -> Model:
    """A variant of a bundle, each chunk and graph checked against the manifest's sha256 before it is used."""
    root = Path(bundle_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"{manifest_path} missing: --bundle names a folder made by `make bundle`")
    try:
        manifest = parse_bundle_manifest(manifest_path.read_text(), str(manifest_path))
    except (OSError, ValueError) as err:  # ManifestError is a ValueError
        raise ModelError(f"{manifest_path}: {err}") from None
    name = _pick(manifest.variants, variant, manifest.default_variant, root)
    entry = manifest.variants[name]
    parts = entry.stages or [entry]
    sessions = tuple(_bytes_session(_join_chunks(root, part, f"{name}{':' + part.name if entry.stages else ''}"),
                                     part.session_config or {}, threads) for part in parts)
    staged = f", {len(parts)} stages" if entry.stages else ""
    return Model(f"{manifest.model.name} {name} (bundle {root}{staged})",
                 Preprocessing.from_dict(to_json(manifest.preprocessing)), dict(manifest.refine), sessions)


def _join_chunks(root: Path, part, what: str) -> bytes:
    """A graph's bytes from its chunks, refused unless every chunk and the whole match their sha256. A coded
    variant's chunks are its weight container: decoded (quantize/ccw.py), the result checked the same way."""
    data = bytearray()
    inside = root.resolve()
    for chunk in part.chunks:
        path = root / chunk.path
        if not path.resolve().is_relative_to(inside):
            raise ModelError(f"{root / 'manifest.json'}: chunk path {chunk.path!r} of {what} leaves the bundle")
        try:
            block = path.read_bytes()
        except OSError as err:
            raise ModelError(f"chunk {path} of variant {what} cannot be read: {err.strerror or err}") from None
        actual = hashlib.sha256(block).hexdigest()
        if len(block) != chunk.bytes or actual != chunk.sha256:
            raise ModelError(f"chunk {path} of variant {what} failed its integrity check ({len(block)} bytes, "
                             f"sha256 {actual}; the manifest lists {chunk.bytes} bytes, {chunk.sha256}): the bundle "
                             "is corrupt or was altered, refused")
        data += block
    coded = getattr(part, "coded", None)
    if coded is not None:
        actual = hashlib.sha256(data).hexdigest()
        if len(data) != coded.bytes or actual != coded.sha256:
            raise ModelError(f"variant {what} of {root}: the joined chunks ({len(data)} bytes, sha256 {actual}) are "
                             f"not the weight container the manifest lists ({coded.bytes} bytes, {coded.sha256}): refused")
        try:
            data = ccw.decode(bytes(data))
        except ccw.ContainerError as err:
            raise ModelError(f"variant {what} of {root}: {err}: refused") from None
    actual = hashlib.sha256(data).hexdigest()
    if len(data) != part.bytes or (part.sha256 and actual != part.sha256):
        raise ModelError(f"variant {what} of {root}: the joined chunks ({len(data)} bytes, sha256 {actual}) are "
                         f"not the graph the manifest lists ({part.bytes} bytes, {part.sha256}): refused")
    return bytes(data)


def _bytes_session(model: bytes, config: dict[str, str], threads: int) -> ort.InferenceSession:
    """A CPU session of a graph in memory with the session config its manifest entry carries."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: {err}") from None


def parse_color(text: str) -> tuple[int, int, int]:
    """``#rgb`` or ``#rrggbb`` (the ``#`` optional, any case) → (r, g, b)."""
    match = re.fullmatch(r"#?([0-9a-f]{3}|[0-9a-f]{6})", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"colour {text!r} is not #rgb or #rrggbb")
    digits = match[1] if len(match[1]) == 6 else "".join(c * 2 for c in match[1])
    return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))


@dataclass(frozen=True)
class Look:
    """What a cut writes: ``output`` cutout|mask|color, ``format`` png|webp|jpeg, ``refine`` auto|True|False
    (None: the model's refine default)."""

    output: str = "cutout"
    format: str = "png"
    color: tuple[int, int, int] = (255, 255, 255)
    quality: int = 92
    refine: str | bool | None = None


def own_alpha(path: Path) -> np.ndarray | None:
    """The photo's own alpha channel (HxW uint8, EXIF-oriented like ``load_rgb``), None when it is opaque.
    Decoded apart from ``load_rgb`` (a second decode only for files with transparency) so that the model's view
    of the photo stays exactly ``load_rgb``'s."""
    try:
        with Image.open(path) as img:
            if not img.has_transparency_data:
                return None
            alpha = np.asarray(ImageOps.exif_transpose(img).convert("RGBA").getchannel("A"))
    except Exception as err:  # Pillow raises several types for undecodable files
        raise ImageError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    return None if alpha.min() == 255 else alpha


def cut_image(model: Model, path: Path, look: Look, max_pixels: int = MAX_PIXELS) -> bytes:
    """One photo file → the encoded output image."""
    rgb = load_rgb(path, max_pixels)
    height, width = rgb.shape[:2]
    alpha, colours = model.alpha(rgb), rgb
    if want_refine(look.refine, model.refine_params, width, height, model.pre.input_size):
        alpha, colours = refine(alpha, rgb, model.refine_params, decontaminate=False if look.output == "mask" else None)
    transparency = own_alpha(path)
    if transparency is not None:
        alpha = np.minimum(alpha, transparency.astype(np.float32) / 255)
    return encode(compose(alpha, colours, look), look)


def compose(alpha: np.ndarray, colours: np.ndarray, look: Look) -> Image.Image:
    alpha8 = np.floor(np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)
    if look.output == "mask":
        return Image.fromarray(alpha8, "L")
    if look.output == "color" or look.format == "jpeg":  # JPEG has no alpha: composite like the browser does
        a = np.clip(alpha, 0, 1).astype(np.float32)[..., None]
        mixed = colours.astype(np.float32) * a + np.asarray(look.color, np.float32) * (1 - a)
        return Image.fromarray(np.floor(mixed + 0.5).astype(np.uint8), "RGB")
    return Image.fromarray(np.dstack([colours, alpha8]), "RGBA")


def encode(img: Image.Image, look: Look) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=FORMATS[look.format], **({} if look.format == "png" else {"quality": look.quality}))
    return buf.getvalue()


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    problem: str | None = None  # why it cannot be cut (an output name clash), reported as a failure


def _wanted(path: Path, skip_below: Path) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
            and skip_below not in path.resolve().parents)


def plan(inputs: list[str], out: Path, recursive: bool = False, fmt: str = "png") -> list[Job]:
    """Jobs for files, folders (images directly inside; all below with ``recursive``) and glob patterns.
    An argument that names no image, or a folder that is ``out`` itself, is a UsageError; images below ``out``
    (a subfolder of a folder being cut) are not inputs."""
    out_resolved = Path(out).resolve()
    found: list[tuple[Path, Path]] = []  # (input file, its path relative to what was named)
    nothing = []
    for arg in inputs:
        path = Path(arg)
        if path.is_file():  # named: tried whatever its suffix
            files, base = [path], path.parent
        elif path.is_dir():
            files, base = sorted(f for f in (path.rglob("*") if recursive else path.iterdir())
                                 if _wanted(f, out_resolved)), path
        else:
            wild = next((i for i, part in enumerate(path.parts) if any(c in part for c in WILDCARDS)), None)
            files = [] if wild is None else sorted(m for m in map(Path, glob.glob(arg, recursive=True))
                                                   if _wanted(m, out_resolved))
            base = Path(*path.parts[:wild]) if wild else Path(".")
        if not path.is_file() and base.resolve() == out_resolved:
            nothing.append(f"{arg}: the output folder itself (outputs would be cut again): -o another folder")
        elif not files and path.is_dir():
            nothing.append(f"{arg}: no images in this folder" + ("" if recursive else " (-r for subfolders)"))
        elif not files:
            nothing.append(f"{arg}: no such file or folder, or no image matches")
        found += [(f, f.relative_to(base)) for f in files]
    if nothing:
        raise UsageError("; ".join(nothing))
    jobs, owners, seen = [], {}, set()
    for source, rel in found:
        key = source.resolve()
        if key in seen:  # named twice (e.g. a file and its folder): cut once
            continue
        seen.add(key)
        target = Path(out) / rel.with_suffix(f".{fmt}")
        owner = owners.setdefault(target.resolve(), source)
        problem = None
        if owner is not source:
            problem = f"its output {target} is the output of {owner} too, which is cut instead: rename one"
        elif target.resolve() == key:
            problem = f"its output {target} would replace the input itself: choose another -o folder"
        jobs.append(Job(source, target, problem))
    return jobs


@dataclass
class Tally:
    cut: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def cut_files(model: Model, jobs: list[Job], look: Look, overwrite: bool = False,
              max_pixels: int = MAX_PIXELS) -> Tally:
    """Cut every job, reporting each failure on stderr and going on; outputs that exist are skipped unless
    ``overwrite``. Each output is written atomically (never a half-written image)."""
    tally = Tally()
    with tqdm(jobs, unit="photo", file=sys.stderr, dynamic_ncols=True) as bar:
        for job in bar:
            if job.problem is None and job.target.exists() and not overwrite:
                tally.skipped += 1
                continue
            started = time.perf_counter()
            problem = job.problem or _cut_job(model, job, look, max_pixels)
            if problem is None:
                tally.cut += 1
                tally.seconds += time.perf_counter() - started
            else:
                tally.failed += 1
                tqdm.write(f"error: {job.source}: {problem}", file=sys.stderr)
    return tally


def _cut_job(model: Model, job: Job, look: Look, max_pixels: int) -> str | None:
    """Cut one photo and write its output; None when done, else why not."""
    try:
        atomic_write_bytes(job.target, cut_image(model, job.source, look, max_pixels))
    except ImageError as err:
        return str(err).removeprefix(f"{job.source}: ")
    except OSError as err:  # an unreadable input, an unwritable output
        return f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    return None


def main(args: argparse.Namespace) -> int:
    """`clearcut cut` (arguments: export/cli.py): 0 when every photo was cut or skipped, 1 when any failed or
    the model cannot be used, 2 for arguments that cannot work."""
    try:
        look = Look(args.output, args.format, parse_color(args.color), args.quality, REFINE[args.refine])
        max_pixels = MAX_PIXELS if args.max_pixels is None else args.max_pixels
        if not 1 <= look.quality <= 100 or args.threads < 1 or max_pixels < 1:
            raise UsageError("--quality must be 1..100, --threads and --max-pixels at least 1")
        jobs = plan(args.inputs, Path(args.out), args.recursive, args.format)
        if args.bundle:
            model = load_bundle(Path(args.bundle), args.variant, args.threads)
        elif args.build or (DEFAULT_BUILD / "manifest.json").is_file():
            model = load_build(Path(args.build or DEFAULT_BUILD), args.variant, args.threads)
        else:
            raise UsageError(f"no model: {DEFAULT_BUILD} has no build (run `make export`); pass --build or --bundle")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    refine_mode = args.refine or model.refine_params.get("default")
    print(f"{len(jobs)} photo(s) -> {args.out}: {model.label}, {look.output} as {look.format}, refine {refine_mode}",
          file=sys.stderr)
    tally = cut_files(model, jobs, look, args.overwrite, max_pixels)
    rate = f" ({tally.cut / tally.seconds:.2f} photos/s)" if tally.cut and tally.seconds else ""
    print(f"cut {tally.cut}{rate}, skipped {tally.skipped} (output exists; --overwrite cuts again), "
          f"failed {tally.failed}")
    return 1 if tally.failed else 0
