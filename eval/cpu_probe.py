"""CPU latency and peak memory of one ONNX file, measured in a process of its own.

    python -m eval.cpu_probe MODEL.onnx INPUT.npy RUNS THREADS   # prints one JSON line

A fresh process, so that its peak RSS minus what the interpreter and imports took is the model's alone
(weights, session, arena, one run). `measure` starts it and reads the answer.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from eval.latency import cpu_latency_ms

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # Linux: resets the peak (VmHWM) to the current RSS
MODULE = "eval.cpu_probe"


class CpuProbeError(RuntimeError):
    """The probe process failed."""


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status in MB; None where there is no such file or field."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """Forget the peak so far (the imports' spike) where Linux allows it; returns the baseline to subtract."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return _max_rss_mb()
    current = _status_mb("VmRSS")
    return _max_rss_mb() if current is None else current


def peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return _max_rss_mb() if peak is None else peak


def probe(path: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    """Latency (eval.latency.cpu_latency_ms) plus ``peak_rss_mb``: the peak RSS above the baseline."""
    baseline = reset_peak_rss()
    result = cpu_latency_ms(path, x, runs=runs, threads=threads)
    result["peak_rss_mb"] = peak_rss_mb() - baseline
    return result


def measure(path: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    """Run the probe on ``path`` with input ``x`` in a fresh process and return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, x)
        done = subprocess.run([sys.executable, "-m", MODULE, str(path), str(npy), str(runs), str(threads)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise CpuProbeError(f"{path}: the latency probe failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    path, npy, runs, threads = argv if argv is not None else sys.argv[1:]
    print(json.dumps(probe(Path(path), np.load(npy), int(runs), int(threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
