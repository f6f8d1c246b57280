"""DIS IS-Net (Qin et al. 2022, xuebinqin/DIS ``ISNetDIS``), with upstream parameter names.

Also the layout of BRIA RMBG-1.4 and of the IS-Net shipped by @imgly/background-removal-data.
"""
from __future__ import annotations

import torch
from torch import nn

from models.rsu import RSU4, RSU4F, RSU5, RSU6, RSU7, downsample, upsample_like


class ISNetDIS(nn.Module):
    """``forward`` returns upstream's pair: six sigmoid side maps at input resolution (``[0][0]`` is the
    finest and the one used for inference) and the six decoder features."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, 64, 3, stride=2, padding=1)
        # Defined upstream but not used in forward; kept so that upstream checkpoints map one to one.
        self.pool_in = downsample()
        encoder = [RSU7(64, 32, 64), RSU6(64, 32, 128), RSU5(128, 64, 256), RSU4(256, 128, 512),
                   RSU4F(512, 256, 512), RSU4F(512, 256, 512)]
        for i, stage in enumerate(encoder, start=1):
            setattr(self, f"stage{i}", stage)
            if i < len(encoder):
                setattr(self, f"pool{i}{i + 1}", downsample())
        decoder = {5: RSU4F(1024, 256, 512), 4: RSU4(1024, 128, 256), 3: RSU5(512, 64, 128),
                   2: RSU6(256, 32, 64), 1: RSU7(128, 16, 64)}
        for i, stage in decoder.items():
            setattr(self, f"stage{i}d", stage)
        for i, channels in enumerate([64, 64, 128, 256, 512, 512], start=1):
            setattr(self, f"side{i}", nn.Conv2d(channels, out_ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        encoded = []
        hx = self.conv_in(x)
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            encoded.append(hx)
            if i < 6:
                hx = getattr(self, f"pool{i}{i + 1}")(hx)
        decoded = {6: encoded[5]}
        for i in range(5, 0, -1):
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, encoded[i - 1]), encoded[i - 1]), 1))
            decoded[i] = hx
        sides = [torch.sigmoid(upsample_like(getattr(self, f"side{i}")(decoded[i]), x)) for i in range(1, 7)]
        return sides, [decoded[i] for i in range(1, 7)]
