"""Names every layer agrees on: the graphs' input and output, and the manifests' schema identifiers."""
from __future__ import annotations

INPUT_NAME = "input"  # the preprocessed image, 1x3xHxW float32
OUTPUT_NAME = "alpha"  # the foreground alpha, 1x1xHxW in [0, 1]

BUILD_SCHEMA = "clearcut.build/1"
BUNDLE_SCHEMA = "clearcut.bundle/1"
