"""Swin Transformer v1 backbone (Liu et al. 2021), the detection variant BiRefNet uses: four stages of
(shifted) window attention, feature maps padded to a multiple of the window, a LayerNorm per output.

Parameter names follow upstream (``patch_embed``, ``layers.N.blocks.M.attn.qkv`` ... ``norm0``-``norm3``), so
BiRefNet checkpoints load strictly. Written for a static-shape ONNX export:

- everything that depends only on the feature-map size (padding, the shifted-window attention mask, the
  relative position bias layout) is computed from Python ints with numpy, never with slice assignment on
  tensors, so the exporter sees constants;
- q/k/v are split with ``chunk`` (Split), patch merging is a reshape + transpose, never integer indexing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MASKED = -100.0  # upstream's additive mask value between tokens of different shifted regions


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the four outputs, finest first."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))


# Upstream BiRefNet models/backbones/swin_v1.py: swin_v1_l and swin_v1_t.
SWIN_L = SwinSpec(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)
SWIN_T = SwinSpec(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def relative_position_index(window: int) -> np.ndarray:
    """Index into the (2w-1)^2 bias table for every pair of tokens of a window (upstream's layout)."""
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """The additive attention mask of the shifted windows, (windows, 1, N, N): 0 between tokens of the same
    region of the rolled feature map, -100 otherwise. ``height``/``width`` are already padded."""
    def regions(size: int) -> np.ndarray:
        ids = np.zeros(size, np.int64)
        ids[size - window:size - shift] = 1
        ids[size - shift:] = 2
        return ids

    region = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = region.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    different = windows[:, :, None] != windows[:, None, :]
    return np.where(different, MASKED, 0.0).astype(np.float32)[:, None]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Upstream keeps this deterministic index as a (persistent) buffer, so checkpoints carry it.
        self.register_buffer("relative_position_index", torch.from_numpy(relative_position_index(window)))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """(1, heads, N, N). Depends on parameters only: the exporter folds it into one constant."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, n, channels = x.shape
        head_dim = channels // self.heads
        q, k, v = (t.reshape(windows, n, self.heads, head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias()
        if mask is not None:
            count = mask.shape[0]
            attn = (attn.reshape(windows // count, count, self.heads, n, n) + mask).reshape(windows, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(windows, n, channels))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B, H, W, C) → same. ``mask``: the stage's shifted-window mask (used when shifting)."""
        batch, height, width, channels = (int(s) for s in x.shape)
        ws = self.window
        pad_h, pad_w = (-height) % ws, (-width) % ws
        y = self.norm1(x)
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # zeros after the norm, as upstream
        hp, wp = height + pad_h, width + pad_w
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = y.reshape(batch, hp // ws, ws, wp // ws, ws, channels).permute(0, 1, 3, 2, 4, 5)
        attended = self.attn(windows.reshape(-1, ws * ws, channels), mask if self.shift else None)
        y = attended.reshape(batch, hp // ws, wp // ws, ws, ws, channels).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(batch, hp, wp, channels)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_h or pad_w:
            y = y[:, :height, :width, :]
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated in upstream's order (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2]), then LayerNorm and a linear 4C → 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = (int(s) for s in x.shape)
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        # (B, H/2, dy, W/2, dx, C) → (B, H/2, W/2, dx, dy, C): dy varies fastest, as upstream's concat
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5)
        return self.reduction(self.norm(x.reshape(batch, height // 2, width // 2, 4 * channels)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(SwinTransformerBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2,
                                                         mlp_ratio) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) → (this stage's output, the next stage's input)."""
        height, width = int(x.shape[1]), int(x.shape[2])
        ws = self.window
        mask = torch.from_numpy(shifted_window_mask(height + (-height) % ws, width + (-width) % ws, ws, self.shift))
        mask = mask.to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, embed_dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, embed_dim, patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = int(x.shape[2]), int(x.shape[3])
        pad_h, pad_w = (-height) % self.patch, (-width) % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class SwinTransformer(nn.Module):
    """``forward(x)`` → four NCHW maps at strides 4, 8, 16, 32 with ``spec.channels`` channels."""

    def __init__(self, spec: SwinSpec):
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.patch_size, spec.embed_dim)
        stages = len(spec.depths)
        self.layers = nn.ModuleList(
            BasicLayer(spec.channels[i], spec.depths[i], spec.num_heads[i], spec.window_size, spec.mlp_ratio,
                       downsample=i < stages - 1) for i in range(stages))
        for i, channels in enumerate(spec.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            outs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2))
        return tuple(outs)
