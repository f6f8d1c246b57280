"""onnxruntime-web's WASM engine, run from Python: what browser users compute, for the export's parity gate.

Native onnxruntime picks CPU kernels per machine (AVX2 / AVX-512 / VNNI), so its numbers are the gate machine's,
not the users'. The browser bundle runs onnxruntime-web's WASM kernels, whose arithmetic is the same on every
CPU. `run_wasm` runs the very npm package the bundle ships (web_runtime/node_modules) under Node, through
web_runtime/node_wasm_run.mjs, with the session options of web_runtime/src/engine_ort.js and a fixed thread
count (the default, one per core, would tie results to the machine again).

Torch-free, like the rest of the gate.
"""
from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

WEB_RUNTIME = Path(__file__).resolve().parents[1] / "web_runtime"
SCRIPT = WEB_RUNTIME / "node_wasm_run.mjs"
ORT_WEB_PACKAGE = WEB_RUNTIME / "node_modules" / "onnxruntime-web"
_PROGRESS = re.compile(r"^progress (\d+)/(\d+)$")
_TAIL_LINES = 30


def _ort_web_version() -> str | None:
    try:
        return json.loads((ORT_WEB_PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


# The onnxruntime-web release run_wasm uses (the build manifest records it beside the parity numbers);
# None when web_runtime/node_modules is not installed.
WASM_ENGINE_VERSION: str | None = _ort_web_version()


def wasm_available() -> str | None:
    """None when run_wasm can run here, else why not (so a gate can say what to install instead of crashing)."""
    if shutil.which("node") is None:
        return "node is not installed (run `make setup-system`)"
    if _ort_web_version() is None:
        return f"onnxruntime-web is not installed in {ORT_WEB_PACKAGE.parent} (run `make setup`)"
    if not SCRIPT.exists():
        return f"{SCRIPT} is missing"
    return None


def run_wasm(graph: Path, inputs: Sequence[np.ndarray], threads: int = 2, session_config: dict | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """The graph's first output for each input (same shape/dtype float32 as native onnxruntime gives), computed by
    onnxruntime-web's WASM engine under Node with a fixed thread count.

    `session_config`: the bundle manifest's per-variant `session_config` (onnxruntime's `extra` options, e.g.
    session.disable_quant_qdq), so the session is built as the browser builds it. `progress(done, total)` is
    called after each input. All inputs go to Node in one process (one session, one wasm compile); they pass
    through a temp folder as raw float32, which Node reads one input at a time.
    """
    reason = wasm_available()
    if reason:
        raise RuntimeError(f"onnxruntime-web WASM engine unavailable: {reason}")
    arrays = [np.ascontiguousarray(x, dtype="<f4") for x in inputs]
    if not arrays:
        return []
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"all inputs must have one shape; got {sorted({a.shape for a in arrays})}")
    graph = Path(graph).resolve()
    with tempfile.TemporaryDirectory(prefix="clearcut-wasm-") as tmp:
        tmp = Path(tmp)
        with (tmp / "inputs.f32").open("wb") as f:
            for a in arrays:
                f.write(a.tobytes())
        job = {"model": str(graph), "threads": int(threads), "session_config": dict(session_config or {}),
               "input_name": None, "input_shape": list(shape), "inputs": str(tmp / "inputs.f32"),
               "output": str(tmp / "outputs.f32")}
        (tmp / "job.json").write_text(json.dumps(job))
        summary = _run_node(tmp / "job.json", progress)
        out_shape = tuple(summary["output_shape"])
        flat = np.fromfile(tmp / "outputs.f32", dtype="<f4")
    if summary["count"] != len(arrays) or flat.size != len(arrays) * int(np.prod(out_shape)):
        raise RuntimeError(f"node_wasm_run returned {flat.size} floats for {summary['count']} outputs of "
                           f"{out_shape}; expected {len(arrays)} outputs")
    return [o.astype(np.float32) for o in flat.reshape((len(arrays), *out_shape))]


def _run_node(job: Path, progress: Callable[[int, int], None] | None) -> dict:
    """Run the Node script on a job file, relaying its progress lines; its summary line, or RuntimeError."""
    # cwd web_runtime: where its package.json and node_modules are (the script's imports resolve from there)
    proc = subprocess.Popen(["node", str(SCRIPT), str(job)], cwd=WEB_RUNTIME, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    for line in proc.stderr:
        line = line.rstrip("\n")
        match = _PROGRESS.match(line)
        if match and progress is not None:
            progress(int(match[1]), int(match[2]))
        elif not match:
            tail.append(line)
    stdout = proc.stdout.read()
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"onnxruntime-web (node {SCRIPT.name}) failed with exit code {code}:\n" + "\n".join(tail))
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"node {SCRIPT.name} printed no summary line; stdout: {stdout[-2000:]!r}") from None
