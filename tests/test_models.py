"""Architectures load upstream-format checkpoints strictly; bad files fail clearly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models.checkpoint import CheckpointError, load_model, read_state_dict
from models.architectures import ARCHITECTURES, build_model
from models.registry import REGISTRY, get_model_config

ARCH_MODEL = {"u2net": "u2net", "u2netp": "u2netp", "isnet": "isnet-imgly"}

# Key names as published by upstream (xuebinqin/U-2-Net u2net.py, xuebinqin/DIS isnet.py).
UPSTREAM_KEYS = {
    "u2net": ["stage1.rebnconvin.conv_s1.weight", "stage1.rebnconv7.bn_s1.running_var",
              "stage5d.rebnconv1d.conv_s1.bias", "stage6.rebnconv4.conv_s1.weight", "side6.weight", "outconv.weight"],
    "u2netp": ["stage1.rebnconv1d.bn_s1.weight", "stage4d.rebnconv3d.conv_s1.weight", "outconv.bias"],
    "isnet": ["conv_in.weight", "conv_in.bias", "stage1.rebnconv6d.conv_s1.weight", "stage5d.rebnconv3d.bn_s1.bias",
              "side1.weight", "side6.bias"],
}
# ZhengPeng7/BiRefNet models/birefnet.py + backbones/swin_v1.py (shapes and the rest: tests/test_birefnet.py)
_BIREFNET_KEYS = ["bb.patch_embed.proj.weight", "bb.layers.1.downsample.reduction.weight", "bb.norm3.bias",
                  "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight",
                  "decoder.ipt_blk5.conv1.weight", "decoder.gdt_convs_attn_4.0.weight", "decoder.conv_out1.0.bias"]
UPSTREAM_KEYS.update({arch: _BIREFNET_KEYS for arch in ("birefnet-swin-l", "birefnet-swin-t", "birefnet-tiny")})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_upstream_key_names(arch):
    with torch.device("meta"):  # names only: Swin-L's 220M parameters need not be initialised
        keys = set(ARCHITECTURES[arch]().state_dict())
    assert set(UPSTREAM_KEYS[arch]) <= keys
    if arch.startswith("birefnet"):
        assert "bb.layers.3.blocks.1.attn.relative_position_index" in keys
    else:
        assert not any(k.startswith("outconv") for k in keys) if arch == "isnet" else "outconv.weight" in keys


def test_isnet_has_119_convs_and_u2net_sizes():
    isnet = ARCHITECTURES["isnet"]()
    assert sum(isinstance(m, nn.Conv2d) for m in isnet.modules()) == 119
    params = {a: sum(p.numel() for p in ARCHITECTURES[a]().parameters()) for a in ("u2net", "u2netp")}
    assert 44_000_000 < params["u2net"] < 44_100_000  # 176.3 MB of fp32
    assert 1_130_000 < params["u2netp"] < 1_140_000  # 4.7 MB


@pytest.mark.parametrize("arch", sorted(ARCH_MODEL))  # BiRefNet's round trips: tests/test_birefnet.py
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_strict_load_roundtrip(arch, fmt, tmp_path):
    config = get_model_config(ARCH_MODEL[arch])
    torch.manual_seed(1)
    source = build_model(config).eval()
    state = source.state_dict()
    path = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel checkpoints
    else:
        save_file({f"_orig_mod.{k}": v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_model(config, path)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        a, b = source(x), loaded(x)
    first = (lambda out: out[0][0]) if arch == "isnet" else (lambda out: out[0])
    assert first(a).shape == (1, 1, 64, 64)
    assert torch.equal(first(a), first(b))


def test_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "u2netp.pth"
    torch.save(build_model(get_model_config("u2netp")).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit U2NET: .*other shapes: stage1"):
        load_model(get_model_config("u2net"), path)
    with pytest.raises(CheckpointError, match=r"does not fit ISNetDIS: .*missing: conv_in.weight"):
        load_model(get_model_config("isnet-imgly"), path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint_is_refused(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    state = build_model(get_model_config("u2netp")).state_dict()
    if suffix == ".pth":
        torch.save(state, good)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(good))
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(bad)
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_state_dict(junk)


def test_registry_entries_are_complete():
    for name, config in REGISTRY.items():
        assert config.architecture in ARCHITECTURES, name
        source = config.sources[0]
        assert len(source.sha256) == 64 and source.url.startswith("https://"), name
        assert config.licence and config.licence_note, name
        pre = config.preprocessing
        assert len(pre.mean) == len(pre.std) == 3 and pre.input_size[0] % 32 == 0, name
        assert set(config.default_variants) <= set(config.thresholds), name
