from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.registry import get_model_config

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev"


@pytest.fixture(scope="session")
def tiny_u2netp_weights(tmp_path_factory) -> Path:
    """A random-init U^2-NetP checkpoint in upstream format (DataParallel ``module.`` prefix included)."""
    torch.manual_seed(0)
    model = get_model_config("u2netp").build()
    path = tmp_path_factory.mktemp("weights") / "u2netp_random.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("CLEARCUT_CACHE", str(directory))
    return directory
