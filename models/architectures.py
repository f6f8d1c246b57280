"""Architecture constructors by the registry's ``architecture`` key: the one place that builds torch models."""
from __future__ import annotations

from typing import Callable

from torch import nn

from models import birefnet
from models.isnet import ISNetDIS
from models.registry import ModelConfig
from models.u2net import U2NET, U2NETP

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "u2net": U2NET, "u2netp": U2NETP, "isnet": ISNetDIS,
    "birefnet-swin-l": lambda: birefnet.BiRefNet(birefnet.BIREFNET_SWIN_L),  # RMBG-2.0, BiRefNet general
    "birefnet-swin-t": lambda: birefnet.BiRefNet(birefnet.BIREFNET_SWIN_T),  # BiRefNet_lite
    "birefnet-tiny": lambda: birefnet.BiRefNet(birefnet.BIREFNET_TINY),  # tests only: same graph, small widths
}


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh (random-init) model of ``config``'s architecture."""
    try:
        constructor = ARCHITECTURES[config.architecture]
    except KeyError:
        raise KeyError(f"{config.name}: unknown architecture {config.architecture!r}; "
                       f"known: {', '.join(sorted(ARCHITECTURES))}") from None
    return constructor()
