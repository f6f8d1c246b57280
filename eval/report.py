"""Write the eval report: report.json, report.md (table + recommendation), plots and gallery.html."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import atomic_write_bytes

# A variant is "within the quality bound" when its quality score is at most this far below the best row.
QUALITY_BOUND = 0.01
# The default a bundle should ship: the smallest download whose quality score is at most this far below fp32's
# (issue 11: weighted F vs ground truth within 0.003 of fp32).
DEFAULT_TOLERANCE = 0.003
GALLERY_MAX_SIDE = 320


def _mb(n) -> str:
    return "—" if n is None else f"{n / 1e6:.1f}"


def _num(v, digits=4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def quality_score(row: dict) -> float:
    """One number to rank rows: weighted F against GT when there is GT, else IoU@0.5 vs fp32."""
    return row["quality"]["weighted_f"] if row.get("quality") else row["parity"]["iou_mean"]


def wire_bytes(row: dict) -> int:
    """Bytes a first visit downloads for the row's model with the CDN's brotli: a coded variant ships its
    ``.ccw`` container, every other variant its ONNX file (gzip where brotli was not measured)."""
    size = row["size"]
    coded = (size.get("ccw") or {}).get("brotli_bytes")
    return coded or size.get("brotli_bytes") or size["gzip_bytes"] or size["bytes"]


def recommend(report: dict) -> dict:
    onnx = [r for r in report["rows"] if r["kind"] == "onnx"]
    best = max(onnx, key=quality_score)
    within = [r for r in onnx if quality_score(r) >= quality_score(best) - QUALITY_BOUND]
    smallest = min(within, key=lambda r: (wire_bytes(r), r["size"]["bytes"]))
    fastest = min(onnx, key=lambda r: r["latency"]["median_ms"])
    score = "weighted F vs ground truth" if best.get("quality") else "IoU@0.5 vs fp32"
    found = {"smallest_within_bound": smallest["name"], "best_quality": best["name"], "fastest": fastest["name"],
             "score": score, "bound": QUALITY_BOUND}
    reference = next((r for r in onnx if r["name"] == report.get("reference")), None)
    if reference is not None:
        holding = [r for r in onnx if quality_score(r) >= quality_score(reference) - DEFAULT_TOLERANCE
                   and r.get("gate_passed") is not False  # only what the bundle may ship ...
                   and r.get("gate_clear") is not False]  # ... and may default to (passed by the margin)
        if holding:
            found["default"] = min(holding, key=lambda r: (wire_bytes(r), r["size"]["bytes"]))["name"]
            found["default_tolerance"] = DEFAULT_TOLERANCE
    return found


def table(report: dict) -> str:
    with_gt = any(r.get("quality") for r in report["rows"])
    coded = any(r["size"].get("ccw") for r in report["rows"])
    header = ["row", "MB", "gzip MB", "br MB"] + (["ccw MB", "ccw br MB"] if coded else []) + ["mean abs", "IoU mean", "IoU worst"]
    if with_gt:
        header += ["MAE", "maxF", "meanF", "S", "E", "wF", "bndF", "bndIoU"]
    header += ["CPU ms", "peak MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report["rows"]:
        p, s = r["parity"], r["size"]
        cells = [r["name"], _mb(s["bytes"]), _mb(s["gzip_bytes"]), _mb(s.get("brotli_bytes"))]
        if coded:
            cells += [_mb((s.get("ccw") or {}).get("bytes")), _mb((s.get("ccw") or {}).get("brotli_bytes"))]
        cells += [f"{p['mean_abs']:.2e}", _num(p["iou_mean"]), _num(p["iou_worst"])]
        if with_gt:
            q = r.get("quality") or {}
            cells += [_num(q.get(k)) for k in ("mae", "max_f", "mean_f", "s_measure", "e_measure", "weighted_f",
                                                "boundary_f", "boundary_iou")]
        peak = r["latency"].get("peak_rss_mb")
        cells += [f"{r['latency']['median_ms']:.0f}", "—" if peak is None else f"{peak:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


REFINE_MEASURES = (("mae", "MAE", -1), ("weighted_f", "wF", 1), ("boundary_f", "bndF", 1), ("boundary_iou", "bndIoU", 1))


def refine_effect(report: dict) -> list[dict]:
    """Per variant with a ``+refine`` row: the quality measures off and on, and the refinement's time."""
    rows = {r["name"]: r for r in report["rows"]}
    effects = []
    for r in report["rows"]:
        base = rows.get(r["name"].removesuffix("+refine")) if r["kind"] == "refine" else None
        if base is None:
            continue
        entry = {"variant": base["name"], "refine_ms": r["latency"].get("refine_ms")}
        if base.get("quality") and r.get("quality"):
            entry["off"] = {k: base["quality"][k] for k, _, _ in REFINE_MEASURES}
            entry["on"] = {k: r["quality"][k] for k, _, _ in REFINE_MEASURES}
            entry["better"] = [label for k, label, sign in REFINE_MEASURES
                               if sign * (entry["on"][k] - entry["off"][k]) > 0]
        effects.append(entry)
    return effects


def _refine_section(report: dict) -> list[str]:
    effects = refine_effect(report)
    if not effects:
        return []
    lines = ["## Edge refinement (`+refine` rows)", "",
             "The browser runtime's refinement (`web_runtime/src/refine.js`; its numpy twin `eval/refine.py`, "
             "constants in `web_runtime/refine.json`): a fast colour guided filter in the uncertain band, "
             "weighted by the model's own uncertainty. Parity of a refined row is against fp32+refine. Colour "
             "decontamination does not change the alpha, so it is not scored here; the gallery shows it.", ""]
    if any("off" in e for e in effects):
        header = ["variant"] + [f"{label} off → on" for _, label, _ in REFINE_MEASURES] + ["refine ms (numpy)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in effects:
            if "off" not in e:
                continue
            cells = [e["variant"]] + [f"{e['off'][k]:.4f} → {e['on'][k]:.4f}" for k, _, _ in REFINE_MEASURES]
            cells.append(_num(e["refine_ms"], 0))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    else:
        lines += ["Without ground truth (no DATA=) only parity and time are shown: refinement time (numpy, "
                  "median per image) " + ", ".join(f"{e['variant']} {_num(e['refine_ms'], 0)} ms" for e in effects)
                  + ".", ""]
    return lines


def _markdown(report: dict, rec: dict) -> str:
    rows = {r["name"]: r for r in report["rows"]}

    def describe(name):
        r = rows[name]
        return (f"`{name}` ({_mb(wire_bytes(r))} MB brotli on the wire, {quality_score(r):.4f} {rec['score']}, "
                f"{r['latency']['median_ms']:.0f} ms CPU, IoU@0.5 vs fp32 mean {r['parity']['iou_mean']:.4f} / worst "
                f"{r['parity']['iou_worst']:.4f} on {r['parity']['worst_image']})")

    source = f"`{report['data']}`" if report["data"] else "the scikit-image sample photos (parity only, no ground truth)"
    lines = [f"# Eval: {report['model']}", "",
             f"{len(report['images'])} images from {source}; parity against the `{report['reference']}` ONNX variant "
             f"at model resolution; quality at the photo's resolution; latency onnxruntime CPU, 2 threads, median "
             f"after one warm-up (torch row: wall time per image during the run).", "",
             table(report), "",
             "## Recommendation", "",
             *([f"- **default** (smallest download through the parity gate within {rec['default_tolerance']} of "
                f"{report['reference']}'s {rec['score']}): {describe(rec['default'])}"] if "default" in rec else []),
             *([f"- failed the build's parity gate (not shipped unless named): "
                + ", ".join(f"`{r['name']}`" for r in report["rows"] if r.get("gate_passed") is False)]
               if any(r.get("gate_passed") is False for r in report["rows"]) else []),
             f"- smallest download within {rec['bound']} of the best {rec['score']}: {describe(rec['smallest_within_bound'])}",
             f"- best quality: {describe(rec['best_quality'])}",
             f"- fastest: {describe(rec['fastest'])}", "",
             *_refine_section(report),
             f"Columns: sizes in MB (10^6 bytes; brotli at quality {_brotli_quality(report)}, window 2^22; ccw: a coded "
             "variant's weight container, what ships for it); mean abs and "
             "IoU@0.5 vs fp32; MAE, max/mean F-beta (beta²=0.3), S-measure, E-measure (mean), weighted F from "
             "pysodmetrics; bndF / bndIoU: boundary F and Boundary IoU within a band of 1 % of the image "
             "diagonal around the edge; peak MB: peak RSS a fresh process gains while it opens "
             "the variant and runs it (onnxruntime CPU, the imports excluded). Browser (WASM) timings come from `make bench-web`, not from here."]
    if report["problems"]:
        lines += ["", "## Skipped files", ""] + [f"- {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"


def _brotli_quality(report: dict):
    levels = {r["size"].get("brotli_quality") for r in report["rows"]} - {None}
    return "/".join(str(q) for q in sorted(levels)) or "—"


def _plots(report: dict, out: Path, rec: dict) -> None:
    try:
        import matplotlib
    except ImportError:  # the tables and the gallery do not need it
        print("note: matplotlib is not installed; size_vs_quality.png and latency.png were not written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted((r for r in report["rows"] if r["kind"] in ("onnx", "peer")), key=wire_bytes)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(shown):
        x, y = wire_bytes(r) / 1e6, quality_score(r)
        coded = bool(r["size"].get("ccw"))
        style = ("x", "tab:red") if r["kind"] == "peer" else (("o", "tab:blue") if coded else ("s", "tab:gray"))
        failed = r.get("gate_passed") is False
        ax.scatter([x], [y], marker=style[0], zorder=3, color="white" if failed else style[1],
                   edgecolors=style[1] if style[0] != "x" else None)
        label = r["name"] + (" (default)" if r["name"] == rec.get("default") else "") + (" (gate: fail)" if failed else "")
        # neighbours by size take turns right-above, right-below and left-above: coded variants sit close together
        offset, align = [((5, 4), "left"), ((5, -11), "left"), ((-5, 6), "right")][i % 3]
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
    frontier = sorted((wire_bytes(r) / 1e6, quality_score(r)) for r in shown if r["size"].get("ccw"))
    if len(frontier) > 1:
        ax.plot(*zip(*frontier), color="tab:blue", alpha=0.5, zorder=2)
    reference = next((r for r in shown if r["name"] == report.get("reference")), None)
    if reference is not None and "default_tolerance" in rec:
        ax.axhline(quality_score(reference) - rec["default_tolerance"], color="tab:green", ls="--", lw=1,
                   label=f"{report['reference']} − {rec['default_tolerance']}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("model download with brotli (MB; coded variants: their .ccw container)")
    ax.set_ylabel(rec["score"])
    ax.set_title(f"{report['model']}: size vs quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "size_vs_quality.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = [r["name"] for r in report["rows"]]
    ax.bar(names, [r["latency"]["median_ms"] for r in report["rows"]])
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"{report['model']}: CPU latency, 2 threads")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)


def _thumb(img: Image.Image) -> Image.Image:
    scale = GALLERY_MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return img


def _checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    light = ((yy // cell + xx // cell) % 2 == 0)
    return np.where(light[..., None], 230, 180).astype(np.float32) * np.ones(3, np.float32)


def _cutout(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(rgb * a + _checkerboard(*alpha.shape) * (1 - a), 0, 255).astype(np.uint8)


def _error_map(alpha: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Red where the alpha is too high (false foreground), blue where too low, black where right."""
    diff = alpha - truth
    out = np.zeros((*alpha.shape, 3), np.float32)
    out[..., 0] = np.clip(diff, 0, 1) * 255
    out[..., 2] = np.clip(-diff, 0, 1) * 255
    return out.astype(np.uint8)


DECONTAMINATION_CROP = 96  # photo pixels per side of the zoomed edge crop
DECONTAMINATION_ZOOM = 3
DEFAULT_PREFERENCE = ("int8", "int8w", "fp16", "fp32")  # the bundle's default-variant order


def _contrast_colour(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Per channel the opposite extreme of the photo's mean background colour (where alpha < 0.1)."""
    background = rgb[alpha < 0.1]
    mean = background.mean(axis=0) if len(background) else rgb.reshape(-1, 3).mean(axis=0)
    return np.where(mean < 128, 255.0, 0.0).astype(np.float32)


def _edge_crop(changed: np.ndarray, size: int) -> tuple[slice, slice]:
    """The size×size window where decontamination changed the colours most (integral image)."""
    height, width = changed.shape
    size = min(size, height, width)
    integral = np.pad(changed.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return slice(y, y + size), slice(x, x + size)


def decontamination_cells(rgb: np.ndarray, base_alpha: np.ndarray, name: str, save) -> list[tuple[str, str]]:
    """Zoomed edge crops over a contrasting colour: the model's alpha with the photo's colours, the refined
    alpha with the photo's colours, and the refined alpha with decontaminated colours."""
    from eval.refine import refine

    refined, colours = refine(base_alpha, rgb)
    background = _contrast_colour(rgb, base_alpha)
    changed = np.abs(colours.astype(np.int16) - rgb.astype(np.int16)).sum(axis=-1)
    ys, xs = _edge_crop(changed, DECONTAMINATION_CROP)
    cells = []
    for label, alpha, image in ((f"{name}: model alpha, photo colours", base_alpha, rgb),
                                (f"{name}+refine: photo colours", refined, rgb),
                                (f"{name}+refine: decontaminated", refined, colours)):
        a = alpha[ys, xs, None]
        crop = np.clip(image[ys, xs].astype(np.float32) * a + background * (1 - a) + 0.5, 0, 255).astype(np.uint8)
        zoomed = np.repeat(np.repeat(crop, DECONTAMINATION_ZOOM, axis=0), DECONTAMINATION_ZOOM, axis=1)
        cells.append((label, save(zoomed, "decontam-" + str(len(cells)))))
    return cells


def _worst_images(report: dict, count: int) -> list[str]:
    """The ``count`` worst images, taken in turn from each row's ranking (by weighted F or parity IoU)."""
    rankings = []
    for r in report["rows"]:
        def score(i):
            return i["quality"]["weighted_f"] if i.get("quality") else i["parity"]["iou"]
        rankings.append([i["image"] for i in sorted(r["images"], key=score)])
    chosen: list[str] = []
    for rank in range(max(len(x) for x in rankings)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank] not in chosen and len(chosen) < count:
                chosen.append(ranking[rank])
    return chosen


def _gallery(report: dict, out: Path, sources: dict[str, tuple[Path, Path | None]], count: int) -> None:
    from eval.dataset import load_sample, Sample

    directory = out / "gallery"
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("*.png"):  # from an earlier run with other rows or images
        stale.unlink()
    rows = report["rows"]
    names = _worst_images(report, count)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(report['model'])}: worst images</title>",
             "<style>body{font-family:sans-serif;background:#fafafa}table{border-collapse:collapse}"
             "td{padding:4px;vertical-align:top;text-align:center;font-size:12px}img{display:block;max-width:"
             f"{GALLERY_MAX_SIDE}px}}</style></head><body>",
             f"<h1>{html.escape(report['model'])}: worst images</h1>",
             "<p>Per image: the photo, the ground truth (or the fp32 alpha when there is none), then for each "
             "row its cutout over a checkerboard and its error map (red: too much foreground, blue: too little)."
             " Last, when there are refined rows: a zoomed edge crop (where colour decontamination changed the most)"
             " of the cutout over a contrasting colour: the model's alpha with the photo's colours, the refined alpha"
             " with the photo's colours, and the refined alpha with decontaminated colours (the old background's"
             " fringe should be gone).</p>"]
    refined = [r["name"].removesuffix("+refine") for r in rows if r["kind"] == "refine"]
    decontam_base = next((n for n in DEFAULT_PREFERENCE if n in refined), refined[0] if refined else None)
    for index, name in enumerate(names):
        image_path, mask_path = sources[name]
        rgb, gt = load_sample(Sample(name, image_path, mask_path))
        by_row = {r["name"]: next(i for i in r["images"] if i["image"] == name) for r in rows}
        fp32 = np.asarray(Image.open(out / by_row[report["reference"]]["alpha_png"]), np.float32) / 255
        truth = gt if gt is not None else fp32
        files = []

        def save(array: np.ndarray, label: str) -> str:
            file = f"{index:02d}-{label}.png"
            _thumb(Image.fromarray(array)).save(directory / file)
            return f"gallery/{file}"

        cells = [("photo", save(rgb, "photo")),
                 ("ground truth" if gt is not None else "fp32 alpha", save((truth * 255).astype(np.uint8), "truth"))]
        for r in rows:
            alpha = np.asarray(Image.open(out / by_row[r["name"]]["alpha_png"]), np.float32) / 255
            q = by_row[r["name"]].get("quality")
            label = f"{r['name']}: wF {q['weighted_f']:.3f}" if q else f"{r['name']}: IoU {by_row[r['name']]['parity']['iou']:.4f}"
            cells.append((label, save(_cutout(rgb.astype(np.float32), alpha), f"{r['name']}-cutout")))
            cells.append((f"{r['name']} error", save(_error_map(alpha, truth), f"{r['name']}-error")))
        if decontam_base is not None:
            base_alpha = np.asarray(Image.open(out / by_row[decontam_base]["alpha_png"]), np.float32) / 255
            cells += decontamination_cells(rgb, base_alpha, decontam_base, save)
        parts.append(f"<h2>{html.escape(name)}</h2><table><tr>")
        parts += [f"<td><img src='{html.escape(src)}' alt='{html.escape(label)}'>{html.escape(label)}</td>"
                  for label, src in cells]
        parts.append("</tr></table>")
        files.clear()
    parts.append("</body></html>")
    (out / "gallery.html").write_text("\n".join(parts))


def write_report(report: dict, out: Path, gallery_images: int = 6,
                 sources: dict[str, tuple[Path, Path | None]] | None = None) -> str:
    """Write every report file into ``out``; returns the markdown table printed at the end of `make eval`."""
    out.mkdir(parents=True, exist_ok=True)
    rec = recommend(report)
    report = dict(report, recommendation=rec)
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    (out / "report.md").write_text(_markdown(report, rec))
    _plots(report, out, rec)
    if sources is None:
        sources = report.get("sources", {})
    _gallery(report, out, {k: (Path(v[0]), Path(v[1]) if v[1] else None) for k, v in sources.items()}, gallery_images)
    return table(report) + "\n\n" + "\n".join(f"{k}: {v}" for k, v in rec.items() if k not in ("score", "bound"))
