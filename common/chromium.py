"""Debian's Chromium as the tests, benchmarks and the export's WebGPU placement check launch it (Playwright, never
`playwright install`)."""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# --no-sandbox: root has no user namespace sandbox here; the rest keep Chromium from calling Google's hosts,
# which this machine's closed network refuses (many at a time) and which would add noise to timings.
BASE_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--disable-quic"]
CHROMIUM_ARGS = BASE_ARGS + ["--disable-gpu"]
# WebGPU on the software adapter (SwiftShader): functional checks only, no timings.
WEBGPU_ARGS = BASE_ARGS + ["--enable-unsafe-webgpu"]


def launch(playwright, args: list[str] | None = None):
    """A headless Chromium browser from a Playwright instance (``sync_playwright()``'s)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=CHROMIUM_ARGS if args is None else args)
