"""Modulated deformable convolution (DCNv2, the semantics of ``torchvision.ops.deform_conv2d`` with one
offset group) from ops every ONNX runtime has: bilinear GridSample + a 1x1 Conv.

For kernel tap ``k = ki * KW + kj`` and output pixel ``(i, j)`` the input is sampled at
``(i * stride - pad + ki + offset[2k], j * stride - pad + kj + offset[2k + 1])`` (y first, as torchvision),
bilinearly with zeros outside the image, multiplied by ``mask[k]``, and the taps are mixed by the conv
weight. GridSample (bilinear, zeros, align_corners=False) is exactly that interpolation once pixel
coordinates are normalised by ``g = (2p + 1) / size - 1``.

Why not the usual export routes: a gather-based export (GatherND/ScatterND) needs ~7 GB in onnxruntime-web
and has no WebGPU kernel; ONNX ``DeformConv`` (opset 19) has no onnxruntime kernel. The sampled tensor is
``C x taps x H x W`` floats, so taps are processed in chunks whose partial results are summed: peak memory
is bounded by the chunk, not by ``K^2``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Largest sampled tensor (C * taps * H * W floats) one chunk may produce: 64 MiB of fp32.
CHUNK_ELEMENTS = 16 * 1024 * 1024


def taps_per_chunk(channels: int, height: int, width: int, taps: int, budget: int = CHUNK_ELEMENTS) -> int:
    """How many kernel taps one GridSample call samples so that ``channels * taps * H * W <= budget``."""
    return max(1, min(taps, budget // max(1, channels * height * width)))


def _base_grid(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               in_size: tuple[int, int], out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised GridSample coordinates of the undeformed taps: y of shape (taps, Ho, 1), x of (taps, 1, Wo).
    A constant of the graph (built from Python ints), never computed from tensors at run time."""
    (kh, kw), (sh, sw), (ph, pw), (h, w), (ho, wo) = kernel, stride, padding, in_size, out_size
    ki, kj = np.divmod(np.arange(kh * kw), kw)
    y = np.arange(ho)[None, :] * sh - ph + ki[:, None]  # (taps, Ho) pixel rows
    x = np.arange(wo)[None, :] * sw - pw + kj[:, None]  # (taps, Wo) pixel columns
    gy = (2.0 * y + 1.0) / h - 1.0
    gx = (2.0 * x + 1.0) / w - 1.0
    return gy[:, :, None], gx[:, None, :]


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask)`` for batch 1 and
    one offset group, exportable to ONNX as Slice/Reshape/GridSample/Mul/Conv/Add (no Gather, no Scatter).

    Shapes are read as Python ints: the graph is specialised to the traced input size (static shapes).
    """
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
    out_ch, in_ch, kh, kw = (int(s) for s in weight.shape)
    batch, channels, height, width = (int(s) for s in x.shape)
    ho, wo = (int(s) for s in offset.shape[2:])
    taps = kh * kw
    if batch != 1 or channels != in_ch or int(offset.shape[1]) != 2 * taps or int(mask.shape[1]) != taps:
        raise ValueError(f"deform_conv2d: input {tuple(x.shape)}, offset {tuple(offset.shape)}, mask "
                         f"{tuple(mask.shape)} and weight {tuple(weight.shape)} do not fit (batch 1, one group)")
    gy_np, gx_np = _base_grid((kh, kw), stride, padding, (height, width), (ho, wo))
    base_y = torch.from_numpy(gy_np).to(x.dtype)
    base_x = torch.from_numpy(gx_np).to(x.dtype)
    # (1, 2*taps, Ho, Wo) → (taps, 2, Ho, Wo): slicing (Slice), never integer indexing (Gather)
    pairs = offset.reshape(taps, 2, ho, wo)
    dy, dx = pairs[:, 0:1].reshape(taps, ho, wo), pairs[:, 1:2].reshape(taps, ho, wo)
    grid_y = base_y + dy * (2.0 / height)
    grid_x = base_x + dx * (2.0 / width)
    step = taps_per_chunk(channels, ho, wo, taps, chunk_elements)
    w_taps = weight.reshape(out_ch, in_ch, taps)
    out = None
    for start in range(0, taps, step):
        stop = min(taps, start + step)
        n = stop - start
        grid = torch.stack((grid_x[start:stop], grid_y[start:stop]), dim=-1).reshape(1, n * ho, wo, 2)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(1, channels, n, ho, wo) * mask[:, start:stop].reshape(1, 1, n, ho, wo)
        w_chunk = w_taps[:, :, start:stop].reshape(out_ch, in_ch * n, 1, 1)
        part = F.conv2d(sampled.reshape(1, channels * n, ho, wo), w_chunk)
        out = part if out is None else out + part
    if bias is not None:
        out = out + bias.reshape(1, out_ch, 1, 1)
    return out


def deform_conv2d_reference(x: np.ndarray, offset: np.ndarray, mask: np.ndarray, weight: np.ndarray,
                            bias: np.ndarray | None = None, stride: int = 1, padding: int = 0) -> np.ndarray:
    """A plain float64 DCNv2 with explicit bilinear corners (torchvision's CPU kernel logic): for tests."""
    x, offset, mask, weight = (np.asarray(a, np.float64) for a in (x, offset, mask, weight))
    _, channels, height, width = x.shape
    out_ch, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    out = np.zeros((1, out_ch, ho, wo))

    def pixel(c_img: np.ndarray, yy: int, xx: int) -> np.ndarray:
        if 0 <= yy < height and 0 <= xx < width:
            return c_img[:, yy, xx]
        return np.zeros(channels)

    for i in range(ho):
        for j in range(wo):
            for ki in range(kh):
                for kj in range(kw):
                    k = ki * kw + kj
                    py = i * stride - padding + ki + offset[0, 2 * k, i, j]
                    px = j * stride - padding + kj + offset[0, 2 * k + 1, i, j]
                    if py <= -1 or py >= height or px <= -1 or px >= width:
                        continue
                    y0, x0 = int(np.floor(py)), int(np.floor(px))
                    fy, fx = py - y0, px - x0
                    value = ((1 - fy) * (1 - fx) * pixel(x[0], y0, x0) + (1 - fy) * fx * pixel(x[0], y0, x0 + 1)
                             + fy * (1 - fx) * pixel(x[0], y0 + 1, x0) + fy * fx * pixel(x[0], y0 + 1, x0 + 1))
                    out[0, :, i, j] += weight[:, :, ki, kj] @ (value * mask[0, k, i, j])
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return out


class DeformableConv2d(nn.Module):
    """BiRefNet's ``DeformableConv2d`` (upstream names ``offset_conv``, ``modulator_conv``, ``regular_conv``):
    offsets and a 2·sigmoid modulation predicted from the input by plain convs, then DCNv2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, bias: bool = False):
        super().__init__()
        taps = kernel_size * kernel_size
        self.stride, self.padding = stride, padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, stride, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, stride, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        # upstream starts from a regular conv: zero offsets, modulation 2·sigmoid(0) = 1
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(x, offset, modulator, self.regular_conv.weight, self.regular_conv.bias,
                             self.stride, self.padding)
