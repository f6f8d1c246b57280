"""Process memory: what a pipeline step records (peak RSS) and hands back to the OS when it ends."""
from __future__ import annotations

import ctypes
import gc
import resource
import sys


def rss_mb() -> dict[str, int]:
    """This process's resident memory now and its high-water mark so far, in MB (Linux)."""
    now = 0
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        pass
    return {"rss_mb": now // 10**6, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1000}


def release_memory() -> None:
    """Hand memory freed by a stage back to the OS. A large model's stages each need several GB (torch export,
    onnxsim, sessions); without this glibc keeps the freed arenas and the process peak is their sum."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
