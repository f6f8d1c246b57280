"""A tiny real model for tests that need a bundle: random-init U^2-NetP exported by the pipeline at 64 px."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export_tiny_u2netp(root: Path, variants: str = "fp32,fp16") -> Path:
    """`<root>/u2netp/`: the build folder of a random-init U^2-NetP (seed 0) exported at 64 px by `clearcut export`."""
    import torch
    from models.architectures import build_model
    from models.registry import get_model_config

    torch.manual_seed(0)
    model = build_model(get_model_config("u2netp"))
    torch.save(model.state_dict(), root / "u2netp_rand.pth")
    subprocess.run([sys.executable, "-m", "export.cli", "export", "--model", "u2netp", "--weights",
                    str(root / "u2netp_rand.pth"), "--size", "64", "--variants", variants, "--out", str(root)],
                   check=True, cwd=REPO, capture_output=True)
    return root / "u2netp"
