"""What each engine runs, measured: every graph of a build in Chromium's WebGPU engine with CPU fallback disabled
(does every node run on the GPU?) and the WASM heap a session of it takes on WebGPU and on WASM (what
`cutter.memory()` reports). Headless Chromium on the software adapter: placement and memory, no timings.

    .venv/bin/python -m bench.webgpu_backends [--build build/isnet-imgly]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.onnx_graph import runtime_session_config
from eval.webgpu_placement import check_placement
from quantize.engine_graphs import ENGINE_SESSION_CONFIG

MB = 1e6


def graphs_of(build: Path) -> list[tuple[str, Path]]:
    """(label, file) of every variant's graph and every engine graph of the build."""
    manifest = json.loads((build / "manifest.json").read_text())
    out = []
    for name, entry in manifest["variants"].items():
        out.append((name, build / entry["path"]))
        for engine, graph in (entry.get("engines") or {}).items():
            out.append((f"{name}:{engine}", build / graph["path"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=Path("build/isnet-imgly"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per session")
    parser.add_argument("--graphs", default="", help="comma-separated labels to measure (e.g. int8p2_68,int8p2_68:webgpu); "
                        "default all (fp32/fp16 sessions on the software adapter take many minutes)")
    args = parser.parse_args(argv)
    graphs = graphs_of(args.build)
    if args.graphs:
        wanted = args.graphs.split(",")
        graphs = [g for g in graphs if g[0] in wanted]
    print(f"{'graph':<22} {'MB':>7} {'all nodes on WebGPU':<20} {'heap WebGPU MB':>15} {'heap WASM MB':>13}  note", flush=True)
    for label, path in graphs:  # one graph at a time, printed as it is measured (a session takes minutes here)
        config = ENGINE_SESSION_CONFIG["webgpu"] if ":" in label else runtime_session_config(path)
        try:
            g = check_placement([(path, config)], timeout_s=args.timeout)[0]
        except Exception as err:  # e.g. the session did not come up within the timeout
            print(f"{label:<22} {path.stat().st_size / MB:7.1f} {'?':<20} {'-':>15} {'-':>13}  {str(err)[-100:]}", flush=True)
            continue
        c = check_placement([(path, runtime_session_config(path))], timeout_s=args.timeout, backend="wasm")[0]
        message = g["message"] or ""
        note = ("" if g["all_on_webgpu"] else "session refused: nodes assigned to the CPU" if "CPU EP" in message
                else message[-110:])
        heap_gpu = f"{g['wasm_heap_bytes'] / MB:.0f}" if g.get("wasm_heap_bytes") else "-"
        heap_cpu = f"{c['wasm_heap_bytes'] / MB:.0f}" if c.get("wasm_heap_bytes") else "-"
        print(f"{label:<22} {path.stat().st_size / MB:7.1f} {'yes' if g['all_on_webgpu'] else 'no':<20} "
              f"{heap_gpu:>15} {heap_cpu:>13}  {note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
