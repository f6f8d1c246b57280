"""Residual U-blocks (RSU) shared by the U^2-Net and DIS IS-Net families.

Parameter names follow the upstream repositories (xuebinqin/U-2-Net, xuebinqin/DIS) so that official
checkpoints load with ``strict=True``: ``rebnconvin``, ``rebnconv1..N``, ``rebnconv{N-1..1}d`` and, inside
each, ``conv_s1`` / ``bn_s1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``src`` to the spatial size of ``target`` (align_corners=False, as upstream)."""
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


def downsample() -> nn.MaxPool2d:
    # ceil_mode keeps odd sizes from losing a row; upstream uses it everywhere.
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 conv (optionally dilated) + BatchNorm + ReLU."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, dirate: int = 1, stride: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate, stride=stride)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """A residual U-block of ``height`` levels (RSU7..RSU4): an encoder with max-pooling, a dilated
    bottom layer and a decoder with bilinear upsampling, plus the input residual."""

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        # Registration order matters for readability only; names carry the upstream layout.
        setattr(self, "rebnconv1", REBNCONV(out_ch, mid_ch, dirate=1))
        for level in range(1, height - 1):
            setattr(self, f"pool{level}", downsample())
            setattr(self, f"rebnconv{level + 1}", REBNCONV(mid_ch, mid_ch, dirate=1))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for level in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{level}d", REBNCONV(mid_ch * 2, mid_ch, dirate=1))
        setattr(self, "rebnconv1d", REBNCONV(mid_ch * 2, out_ch, dirate=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.height
        hxin = self.rebnconvin(x)
        encoded = [getattr(self, "rebnconv1")(hxin)]
        for level in range(1, h - 1):
            pooled = getattr(self, f"pool{level}")(encoded[-1])
            encoded.append(getattr(self, f"rebnconv{level + 1}")(pooled))
        decoded = getattr(self, f"rebnconv{h}")(encoded[-1])
        for level in range(h - 1, 0, -1):
            skip = encoded[level - 1]
            decoded = getattr(self, f"rebnconv{level}d")(torch.cat((decoded, skip), 1))
            if level > 1:
                decoded = upsample_like(decoded, encoded[level - 2])
        return decoded + hxin


class RSU7(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__(7, in_ch, mid_ch, out_ch)


class RSU6(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__(6, in_ch, mid_ch, out_ch)


class RSU5(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__(5, in_ch, mid_ch, out_ch)


class RSU4(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__(4, in_ch, mid_ch, out_ch)


class RSU4F(nn.Module):
    """The flat RSU block used at the lowest resolutions: dilation instead of pooling."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin
