"""The BLAS kernels the build's float arithmetic runs on.

numpy and scipy ship OpenBLAS built for every x86-64 CPU family, and it picks its kernels by the CPU at load
time: Haswell (AVX2 + FMA), SkylakeX (AVX-512), Cooper Lake, Zen… Each sums a matrix product or factorizes in
its own order, so the codec's Cholesky factors, its rounding products and its layer errors would differ in
their last bits from one CPU to the next, and a discrete decision (a rounded weight, a width) could follow
them (bench/reproduce.py measured it under qemu as a Haswell: 238 of 4.5M coded weights differed). Pinning
OpenBLAS to its Haswell kernels, which every x86-64 CPU since 2013 runs, gives every machine the same
arithmetic. It works only before OpenBLAS loads, so the entry points (`clearcut`, the tests, the benchmarks)
call ``pin_blas_kernels`` before anything imports numpy.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PINNED_CORETYPE = "Haswell"
_NEEDS = ("avx2", "fma")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def pin_blas_kernels() -> str | None:
    """Ask OpenBLAS for its Haswell kernels (``OPENBLAS_CORETYPE``) on a CPU that runs them, unless the
    environment already names a kernel set or numpy has already loaded OpenBLAS. Returns the kernel set asked
    for (None: left to OpenBLAS)."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"]
    if "numpy" in sys.modules or not set(_NEEDS) <= _cpu_flags():
        return None
    os.environ["OPENBLAS_CORETYPE"] = PINNED_CORETYPE
    return PINNED_CORETYPE


def blas_kernels() -> list[str]:
    """The loaded BLAS libraries' kernel sets, e.g. ``["openblas Haswell"]`` (numpy's and scipy's)."""
    from threadpoolctl import threadpool_info
    return sorted({f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info() if i["user_api"] == "blas"})


def kernels_pinned() -> bool:
    found = blas_kernels()
    return bool(found) and all(k == f"openblas {PINNED_CORETYPE}" for k in found)
