"""onnxruntime CPU latency: median of repeated runs after a warm-up, on a fixed thread count."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common.sessions import cpu_session


def cpu_latency_ms(path: Path, x: np.ndarray, runs: int = 5, warmup: int = 1, threads: int = 2,
                   session=None) -> dict:
    """Pass an open `session` (of `path`, on `threads`) to time it without opening a second one."""
    session = session or cpu_session(path, threads)
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)), "runs": runs, "threads": threads}
