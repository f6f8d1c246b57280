"""U^2-Net and U^2-NetP (Qin et al. 2020), with the upstream parameter names of xuebinqin/U-2-Net."""
from __future__ import annotations

import torch
from torch import nn

from models.rsu import RSU4, RSU4F, RSU5, RSU6, RSU7, downsample, upsample_like


class U2NetBase(nn.Module):
    """Six encoder stages, five decoder stages, six side outputs fused by ``outconv``.

    ``forward`` returns the seven sigmoid maps of upstream: ``(fused, side1, ..., side6)``.
    """

    def __init__(self, encoder: list[nn.Module], decoder: list[nn.Module], side_channels: list[int], out_ch: int):
        super().__init__()
        for i, stage in enumerate(encoder, start=1):
            setattr(self, f"stage{i}", stage)
            if i < len(encoder):
                setattr(self, f"pool{i}{i + 1}", downsample())
        for i, stage in zip(range(len(decoder), 0, -1), decoder):
            setattr(self, f"stage{i}d", stage)
        for i, channels in enumerate(side_channels, start=1):
            setattr(self, f"side{i}", nn.Conv2d(channels, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(len(side_channels) * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = []
        hx = x
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            encoded.append(hx)
            if i < 6:
                hx = getattr(self, f"pool{i}{i + 1}")(hx)
        decoded = {6: encoded[5]}
        hx = encoded[5]
        for i in range(5, 0, -1):
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, encoded[i - 1]), encoded[i - 1]), 1))
            decoded[i] = hx
        d1 = self.side1(decoded[1])
        sides = [d1] + [upsample_like(getattr(self, f"side{i}")(decoded[i]), d1) for i in range(2, 7)]
        fused = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in [fused, *sides])


class U2NET(U2NetBase):
    """The full 176 MB U^2-Net."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__(
            encoder=[RSU7(in_ch, 32, 64), RSU6(64, 32, 128), RSU5(128, 64, 256), RSU4(256, 128, 512),
                     RSU4F(512, 256, 512), RSU4F(512, 256, 512)],
            decoder=[RSU4F(1024, 256, 512), RSU4(1024, 128, 256), RSU5(512, 64, 128), RSU6(256, 32, 64),
                     RSU7(128, 16, 64)],
            side_channels=[64, 64, 128, 256, 512, 512],
            out_ch=out_ch,
        )


class U2NETP(U2NetBase):
    """The 4.7 MB U^2-NetP: same topology, 16 mid channels everywhere."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__(
            encoder=[RSU7(in_ch, 16, 64), RSU6(64, 16, 64), RSU5(64, 16, 64), RSU4(64, 16, 64),
                     RSU4F(64, 16, 64), RSU4F(64, 16, 64)],
            decoder=[RSU4F(128, 16, 64), RSU4(128, 16, 64), RSU5(128, 16, 64), RSU6(128, 16, 64),
                     RSU7(128, 16, 64)],
            side_channels=[64] * 6,
            out_ch=out_ch,
        )
