"""BiRefNet (Zheng et al. 2024, ZhengPeng7/BiRefNet), inference path, with upstream parameter names.

Also the architecture of BRIA RMBG-2.0. The configuration is upstream's released one (``config.py``):
Swin v1 backbone run on the image and on its half-size copy with features concatenated (``mul_scl_ipt='cat'``),
multi-scale context into the coarsest map (``cxt_num=3``), one ``BasicDecBlk`` squeeze block, decoder blocks
with deformable ASPP (kernel sizes 1, 3, 7), image patches fed into every decoder stage (``dec_ipt_split``),
gradient-attention convs (``out_ref``) and BatchNorm everywhere (``batch_size > 1``). Training-only heads
(``conv_ms_spvn_*``, ``gdt_convs_pred_*``) are kept so that checkpoints map one to one; they are not run.

``forward`` returns upstream's list of predictions; at inference it holds one logit map at input resolution
(the registry's ``OutputSpec`` selects it and applies the sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.deform_conv import DeformableConv2d
from models.errors import CheckpointError
from models.swin import SWIN_L, SWIN_T, SwinSpec, SwinTransformer

GRADIENT_CHANNELS = 16  # upstream's _N of the gradient-attention convs
ASPP_KERNELS = (1, 3, 7)


@dataclass(frozen=True)
class BiRefNetSpec:
    backbone: SwinSpec
    decoder_inter: int = 64  # BasicDecBlk's inter channels (dec_channels_inter='fixed')
    aspp_channels: int = 256  # ASPPDeformable's branch channels
    ipt_inter: int = 64  # SimpleConvs' inter channels of the image-patch inputs

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Decoder input channels, coarsest first: the backbone's, doubled by the half-size pass."""
        return tuple(2 * c for c in reversed(self.backbone.channels))  # type: ignore[return-value]


BIREFNET_SWIN_L = BiRefNetSpec(SWIN_L)  # RMBG-2.0, BiRefNet (general)
BIREFNET_SWIN_T = BiRefNetSpec(SWIN_T)  # BiRefNet_lite
# A small configuration for tests: the same graph structure, a few hundred kB of weights.
BIREFNET_TINY = BiRefNetSpec(SwinSpec(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4),
                             decoder_inter=16, aspp_channels=16, ipt_inter=8)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upstream's bilinear with align_corners=True; the identity when the size already matches."""
    if tuple(int(s) for s in x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def image_patches(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``rearrange('b c (hg h) (wg w) -> b (c hg wg) h w')`` with (h, w) = ``size``."""
    batch, channels, height, width = (int(s) for s in x.shape)
    gh, gw = height // size[0], width // size[1]
    x = x.reshape(batch, channels, gh, size[0], gw, size[1]).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(batch, channels * gh * gw, size[0], size[1])


class ASPPModuleDeformable(nn.Module):
    def __init__(self, in_channels: int, planes: int, kernel_size: int, padding: int):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, planes, kernel_size, 1, padding, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    def __init__(self, in_channels: int, branch_channels: int):
        super().__init__()
        self.aspp1 = ASPPModuleDeformable(in_channels, branch_channels, 1, 0)
        self.aspp_deforms = nn.ModuleList(ASPPModuleDeformable(in_channels, branch_channels, k, k // 2)
                                          for k in ASPP_KERNELS)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)),
                                             nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                                             nn.BatchNorm2d(branch_channels), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(branch_channels * (2 + len(ASPP_KERNELS)), in_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(x), *(block(x) for block in self.aspp_deforms)]
        pooled = self.global_avg_pool(x)
        # bilinear from 1x1 is a broadcast; Expand keeps Resize out of the graph
        branches.append(pooled.expand(-1, -1, *branches[0].shape[2:]))
        return self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))  # dropout: identity at inference


class BasicDecBlk(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spec: BiRefNetSpec):
        super().__init__()
        inter_channels = spec.decoder_inter
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, 1, padding=1)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = ASPPDeformable(inter_channels, spec.aspp_channels)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, padding=1)
        self.bn_in = nn.BatchNorm2d(inter_channels)
        self.bn_out = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_in(self.bn_in(self.conv_in(x)))
        return self.bn_out(self.conv_out(self.dec_att(x)))


class BasicLatBlk(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, inter_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


def _gradient_convs(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, GRADIENT_CHANNELS, 3, 1, 1), nn.BatchNorm2d(GRADIENT_CHANNELS),
                         nn.ReLU(inplace=True))


def _head(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 1, 1, 1, 0))


class Decoder(nn.Module):
    # input channels of ipt_blk5..1: the image split into 32², 16², 8², 4², 1² patches (upstream constants)
    PATCH_GRIDS = {5: 32, 4: 16, 3: 8, 2: 4, 1: 1}

    def __init__(self, spec: BiRefNetSpec):
        super().__init__()
        c0, c1, c2, c3 = spec.channels
        ipt_out = {5: c0 // 8, 4: c0 // 8, 3: c1 // 8, 2: c2 // 8, 1: c3 // 8}
        for level, grid in self.PATCH_GRIDS.items():
            setattr(self, f"ipt_blk{level}", SimpleConvs(3 * grid * grid, ipt_out[level], spec.ipt_inter))
        self.decoder_block4 = BasicDecBlk(c0 + ipt_out[5], c1, spec)
        self.decoder_block3 = BasicDecBlk(c1 + ipt_out[4], c2, spec)
        self.decoder_block2 = BasicDecBlk(c2 + ipt_out[3], c3, spec)
        self.decoder_block1 = BasicDecBlk(c3 + ipt_out[2], c3 // 2, spec)
        self.conv_out1 = _head(c3 // 2 + ipt_out[1])
        self.lateral_block4 = BasicLatBlk(c1, c1)
        self.lateral_block3 = BasicLatBlk(c2, c2)
        self.lateral_block2 = BasicLatBlk(c3, c3)
        for level, ch in ((4, c1), (3, c2), (2, c3)):
            setattr(self, f"conv_ms_spvn_{level}", nn.Conv2d(ch, 1, 1, 1, 0))  # training only
            setattr(self, f"gdt_convs_{level}", _gradient_convs(ch))
            setattr(self, f"gdt_convs_pred_{level}", _head(GRADIENT_CHANNELS))  # training only
            setattr(self, f"gdt_convs_attn_{level}", _head(GRADIENT_CHANNELS))

    def _with_patches(self, level: int, image: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        size = tuple(int(s) for s in p.shape[2:])
        patches = image_patches(image, size) if level > 1 else image
        return torch.cat((p, getattr(self, f"ipt_blk{level}")(resize_to(patches, size))), 1)

    def _gradient_attention(self, level: int, p: torch.Tensor) -> torch.Tensor:
        attn = getattr(self, f"gdt_convs_attn_{level}")(getattr(self, f"gdt_convs_{level}")(p))
        return p * attn.sigmoid()

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> list[torch.Tensor]:
        p = self._gradient_attention(4, self.decoder_block4(self._with_patches(5, image, x4)))
        p = resize_to(p, tuple(x3.shape[2:])) + self.lateral_block4(x3)
        p = self._gradient_attention(3, self.decoder_block3(self._with_patches(4, image, p)))
        p = resize_to(p, tuple(x2.shape[2:])) + self.lateral_block3(x2)
        p = self._gradient_attention(2, self.decoder_block2(self._with_patches(3, image, p)))
        p = resize_to(p, tuple(x1.shape[2:])) + self.lateral_block2(x1)
        p = self.decoder_block1(self._with_patches(2, image, p))
        p = resize_to(p, tuple(image.shape[2:]))
        return [self.conv_out1(self._with_patches(1, image, p))]


def encode(bb: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The backbone on the image and on its half-size copy, features concatenated; x4 also gets the resized
    x1..x3 (multi-scale context)."""
    height, width = int(x.shape[2]), int(x.shape[3])
    full = bb(x)
    half = bb(resize_to(x, (height // 2, width // 2)))
    x1, x2, x3, x4 = (torch.cat((f, resize_to(h, tuple(f.shape[2:]))), 1) for f, h in zip(full, half))
    size = tuple(x4.shape[2:])
    x4 = torch.cat((resize_to(x1, size), resize_to(x2, size), resize_to(x3, size), x4), 1)
    return x1, x2, x3, x4


class BackboneStage(nn.Module):
    """image → (x1, x2, x3, x4): the first browser stage (Swin, most of the weights)."""

    def __init__(self, model: "BiRefNet"):
        super().__init__()
        self.bb = model.bb

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return encode(self.bb, x)


class DecoderStage(nn.Module):
    """(image, x1, x2, x3, x4) → the predictions list: the second browser stage."""

    def __init__(self, model: "BiRefNet"):
        super().__init__()
        self.squeeze_module = model.squeeze_module
        self.decoder = model.decoder

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(image, x1, x2, x3, self.squeeze_module(x4))


class BiRefNet(nn.Module):
    def __init__(self, spec: BiRefNetSpec):
        super().__init__()
        self.spec = spec
        self.bb = SwinTransformer(spec.backbone)
        c = spec.channels
        context = sum(c[1:])  # x1, x2, x3 resized into x4 (cxt_num=3)
        self.squeeze_module = nn.Sequential(BasicDecBlk(c[0] + context, c[0], spec))
        self.decoder = Decoder(spec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return encode(self.bb, x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1, x2, x3, x4 = self.encode(x)
        return self.decoder(x, x1, x2, x3, self.squeeze_module(x4))

    def browser_stages(self) -> list[tuple[str, nn.Module, tuple[str, ...], tuple[str, ...]]]:
        """The model cut into graphs run one after another (one onnxruntime-web session at a time, so that the
        full-size model fits the 4 GB WASM heap): (name, module, input names, output names). The backbone maps
        the image to the four encoder maps; the decoder takes them and the image (its ``ipt_blk`` patches) and
        returns what ``forward`` returns. Attribute names (``bb``, ``squeeze_module``, ``decoder``) are kept so
        that ONNX node names, which the registry's keep-lists match, are the same as in the whole graph."""
        features = ("x1", "x2", "x3", "x4")
        return [("backbone", BackboneStage(self), ("input",), features),
                ("decoder", DecoderStage(self), ("input", *features), ("alpha",))]

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill the deterministic buffers a checkpoint may leave out (``relative_position_index``, BatchNorm's
        ``num_batches_tracked``); a present index must equal ours, else the file is another window layout."""
        state = dict(state)
        for key, value in self.state_dict().items():
            if key.endswith("relative_position_index"):
                if key not in state:
                    state[key] = value
                elif tuple(state[key].shape) == tuple(value.shape) and not torch.equal(state[key].long(), value):
                    raise CheckpointError(f"{key} differs from Swin's relative position layout")
            elif key.endswith("num_batches_tracked") and key not in state:
                state[key] = value
        return state
