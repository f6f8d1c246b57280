"""BiRefNet / RMBG-2.0: deformable conv vs a float64 reference, upstream checkpoint layout, loader errors,
offline pull, and the tiny configuration through the whole pipeline (every variant, the gate)."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from eval.images import sample_photos
from export.cli import main as cli_main
from common.onnx_graph import get_metadata
from export.pipeline import ExportOptions, run_export
from common.sessions import cpu_session
from models.architectures import build_model
from models.checkpoint import CheckpointError, load_model
from models.deform_conv import (DeformableConv2d, deform_conv2d, deform_conv2d_reference, taps_per_chunk)
from models.registry import REGISTRY, get_model_config
from models.swin import relative_position_index, shifted_window_mask

TINY_SIZE = 64
VARIANTS = ["fp32", "fp16", "int8w", "int8"]


# ---------------------------------------------------------------- deformable convolution

@pytest.mark.parametrize("kernel,stride,padding,chunk", [(3, 1, 1, None), (3, 1, 1, 2 * 5 * 9 * 11), (1, 1, 0, None),
                                                         (7, 1, 3, 5 * 9 * 11 * 5), (3, 2, 1, None)])
def test_deform_conv_matches_float64_reference(kernel, stride, padding, chunk):
    torch.manual_seed(kernel + stride)
    x = torch.randn(1, 5, 9, 11, dtype=torch.float64)
    ho, wo = (9 + 2 * padding - kernel) // stride + 1, (11 + 2 * padding - kernel) // stride + 1
    offset = torch.randn(1, 2 * kernel ** 2, ho, wo, dtype=torch.float64) * 3  # many samples fall outside
    mask = torch.rand(1, kernel ** 2, ho, wo, dtype=torch.float64) * 2
    weight, bias = torch.randn(4, 5, kernel, kernel, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expected = deform_conv2d_reference(x.numpy(), offset.numpy(), mask.numpy(), weight.numpy(), bias.numpy(),
                                       stride, padding)
    ours = deform_conv2d(x, offset, mask, weight, bias, stride, padding, chunk or 1 << 30).numpy()
    assert np.abs(ours - expected).max() < 1e-12  # measured ~4e-14
    ours32 = deform_conv2d(x.float(), offset.float(), mask.float(), weight.float(), bias.float(), stride, padding,
                           chunk or 1 << 30).numpy()
    assert np.abs(ours32 - expected).max() < 1e-5 * np.abs(expected).max()


def test_chunking_bounds_the_sampled_tensor():
    # RMBG-2.0's largest deformable conv: K=7 (49 taps), 64 channels, 256² at 1024² input
    step = taps_per_chunk(64, 256, 256, 49)
    assert 1 <= step < 49 and 64 * step * 256 * 256 <= 16 * 1024 * 1024
    assert taps_per_chunk(8, 4, 4, 9) == 9 and taps_per_chunk(1 << 20, 64, 64, 9) == 1


def test_deform_conv_exports_without_gather_and_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    module = DeformableConv2d(8, 6, kernel_size=7, padding=3).eval()
    with torch.no_grad():
        for conv in (module.offset_conv, module.modulator_conv):
            conv.weight.normal_(std=0.05)
            conv.bias.normal_()
    x = torch.randn(1, 8, 20, 24)
    path = tmp_path / "deform.onnx"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: shapes are constants on purpose (static export)
        expected = module(x).numpy()
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not {op for op in ops if op.startswith(("Gather", "Scatter"))} and "DeformConv" not in ops
    assert "GridSample" in ops
    got = cpu_session(path).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-5 * np.abs(expected).max()


def test_swin_constants():
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 13 * 13 - 1
    assert (np.diag(index) == 6 * 13 + 6).all()  # a token relative to itself: the table's centre
    mask = shifted_window_mask(24, 24, 12, 6)
    assert mask.shape == (4, 1, 144, 144) and set(np.unique(mask)) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert (np.diagonal(mask[:, 0], axis1=1, axis2=2) == 0).all()


# ---------------------------------------------------------------- upstream checkpoint layout

# Upstream names and shapes for BiRefNet_lite (Swin-T, embed 96, window 7), derived by hand from
# ZhengPeng7/BiRefNet: models/birefnet.py (BiRefNet, Decoder, SimpleConvs), models/backbones/swin_v1.py
# (swin_v1_t), models/modules/{decoder_blocks,aspp,deform_conv,lateral_blocks}.py and config.py
# (mul_scl_ipt='cat' doubles the channels to 1536/768/384/192, cxt_num=3, dec_ipt_split, squeeze_block
# 'BasicDecBlk_x1', ASPPDeformable kernels 1/3/7, ms_supervision + out_ref, batch_size 4 → BatchNorm).
UPSTREAM_LITE = {
    "bb.patch_embed.proj.weight": (96, 3, 4, 4),
    "bb.patch_embed.norm.bias": (96,),
    "bb.layers.0.blocks.0.attn.relative_position_bias_table": (169, 3),
    "bb.layers.0.blocks.0.attn.relative_position_index": (49, 49),
    "bb.layers.0.blocks.1.attn.qkv.weight": (288, 96),
    "bb.layers.2.blocks.5.mlp.fc1.weight": (1536, 384),
    "bb.layers.2.downsample.reduction.weight": (768, 1536),
    "bb.layers.2.downsample.norm.weight": (1536,),
    "bb.layers.3.blocks.1.attn.relative_position_bias_table": (169, 24),
    "bb.norm3.weight": (768,),
    "squeeze_module.0.conv_in.weight": (64, 2880, 3, 3),
    "squeeze_module.0.bn_in.num_batches_tracked": (),
    "squeeze_module.0.dec_att.aspp1.atrous_conv.offset_conv.weight": (2, 64, 1, 1),
    "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight": (98, 64, 7, 7),
    "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.modulator_conv.bias": (49,),
    "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight": (256, 64, 7, 7),
    "squeeze_module.0.dec_att.aspp_deforms.1.bn.running_var": (256,),
    "squeeze_module.0.dec_att.global_avg_pool.1.weight": (256, 64, 1, 1),
    "squeeze_module.0.dec_att.global_avg_pool.2.running_mean": (256,),
    "squeeze_module.0.dec_att.conv1.weight": (64, 1280, 1, 1),
    "squeeze_module.0.conv_out.weight": (1536, 64, 3, 3),
    "decoder.ipt_blk5.conv1.weight": (64, 3072, 3, 3),
    "decoder.ipt_blk5.conv_out.weight": (192, 64, 3, 3),
    "decoder.ipt_blk3.conv1.weight": (64, 192, 3, 3),
    "decoder.ipt_blk1.conv_out.weight": (24, 64, 3, 3),
    "decoder.decoder_block4.conv_in.weight": (64, 1728, 3, 3),
    "decoder.decoder_block4.conv_out.weight": (768, 64, 3, 3),
    "decoder.decoder_block1.conv_in.weight": (64, 240, 3, 3),
    "decoder.decoder_block1.bn_out.weight": (96,),
    "decoder.conv_out1.0.weight": (1, 120, 1, 1),
    "decoder.lateral_block4.conv.weight": (768, 768, 1, 1),
    "decoder.conv_ms_spvn_2.weight": (1, 192, 1, 1),
    "decoder.gdt_convs_4.0.weight": (16, 768, 3, 3),
    "decoder.gdt_convs_4.1.running_var": (16,),
    "decoder.gdt_convs_pred_3.0.weight": (1, 16, 1, 1),
    "decoder.gdt_convs_attn_2.0.bias": (1,),
}


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build_model(get_model_config(name)).state_dict()


def test_upstream_names_and_shapes_lite():
    state = _meta_state("birefnet-lite")
    for key, shape in UPSTREAM_LITE.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("bb.absolute_pos_embed", "decoder.ipt_blk6", "refiner")) for k in state)


def _safetensors_size(state: dict[str, torch.Tensor], float_dtype: torch.dtype) -> int:
    """Size of the file ``safetensors.torch.save_file(state, metadata={"format": "pt"})`` writes, as
    transformers/huggingface_hub save it: 8 + JSON header (tensors ordered by alignment, then name; padded to 8)
    + data. Names, shapes and dtypes all enter it."""
    codes = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}
    tensors = {k: (tuple(v.shape), float_dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    entries, offset = ['"__metadata__":{"format":"pt"}'], 0
    for key in sorted(tensors, key=lambda k: (-tensors[k][1].itemsize, k)):
        shape, dtype = tensors[key]
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries.append(json.dumps(key) + ":" + json.dumps(
            {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}, separators=(",", ":")))
        offset += size
    header = "{" + ",".join(entries) + "}"
    return 8 + len(header) + (-len(header)) % 8 + offset


def test_safetensors_size_formula_is_the_library_s(tmp_path, birefnet_tiny):
    _, path = birefnet_tiny
    state = {k: v for k, v in build_model(get_model_config("birefnet-tiny")).state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    assert _safetensors_size(state, torch.float32) == (tmp_path / "t.safetensors").stat().st_size


@pytest.mark.parametrize("model,float_dtype", [("rmbg-2.0", torch.float32), ("birefnet-lite", torch.float32),
                                               ("birefnet-general", torch.float16)])
def test_state_dict_has_the_published_file_layout(model, float_dtype):
    # The pinned upstream files' byte sizes (registry, WEIGHT_SOURCES.md) are reproduced exactly by our state
    # dict's names + shapes + dtypes: 884,878,856 (RMBG-2.0 fp32), 177,634,392 (lite), 444,473,596 (BiRefNet fp16).
    assert _safetensors_size(_meta_state(model), float_dtype) == get_model_config(model).sources[0].size


def _upstream_checkpoint(path, name: str, prefix: str, drop_buffers: bool = False) -> dict[str, torch.Tensor]:
    """An upstream-format checkpoint of ``name``: our key list and shapes (checked against upstream above),
    each tensor filled with a distinct value, saved with a wrapper prefix."""
    state = {}
    for i, (key, value) in enumerate(_meta_state(name).items()):
        if drop_buffers and key.endswith(("relative_position_index", "num_batches_tracked")):
            continue
        if key.endswith("relative_position_index"):
            window = int(round(value.shape[0] ** 0.5))
            state[key] = torch.from_numpy(relative_position_index(window))
        elif value.is_floating_point():
            state[key] = torch.full(value.shape, (i % 997) / 997.0)
        else:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return state


@pytest.mark.parametrize("prefix,drop_buffers", [("module.", False), ("_orig_mod.module.", True)])
def test_loader_reads_upstream_checkpoint_lite(tmp_path, prefix, drop_buffers):
    path = tmp_path / "birefnet_lite.safetensors"
    state = _upstream_checkpoint(path, "birefnet-lite", prefix, drop_buffers)
    model = load_model(get_model_config("birefnet-lite"), path)
    loaded = model.state_dict()
    for key in ("bb.layers.2.blocks.5.mlp.fc1.weight", "decoder.conv_out1.0.weight",
                "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight"):
        assert torch.equal(loaded[key], state[key]), key
    assert torch.equal(loaded["bb.layers.0.blocks.0.attn.relative_position_index"],
                       torch.from_numpy(relative_position_index(7)))


def test_wrong_checkpoints_are_named(tmp_path, birefnet_tiny):
    _, tiny = birefnet_tiny
    with pytest.raises(CheckpointError, match=r"does not fit BiRefNet: .*other shapes: bb\.patch_embed"):
        load_model(get_model_config("birefnet-lite"), tiny)
    u2netp = tmp_path / "u2netp.pth"
    torch.save(build_model(get_model_config("u2netp")).state_dict(), u2netp)
    with pytest.raises(CheckpointError, match=r"missing: bb\.patch_embed\.proj\.weight.*unexpected: stage1"):
        load_model(get_model_config("birefnet-tiny"), u2netp)
    bad = tmp_path / "other_window.safetensors"
    state = {k: v.clone() for k, v in build_model(get_model_config("birefnet-tiny")).state_dict().items()}
    state["bb.layers.0.blocks.0.attn.relative_position_index"] = state[
        "bb.layers.0.blocks.0.attn.relative_position_index"].flip(0)
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(CheckpointError, match="relative position layout"):
        load_model(get_model_config("birefnet-tiny"), bad)


def test_offline_export_prints_licence_and_clear_message(cache, monkeypatch, capsys, tmp_path):
    config = REGISTRY["rmbg-2.0"]
    source = config.sources[0]
    # Port 9 on loopback: nothing listens, the connection is refused at once, as offline.
    offline = dataclasses.replace(source, url="http://127.0.0.1:9/model.safetensors")
    monkeypatch.setitem(REGISTRY, "rmbg-2.0", dataclasses.replace(config, sources=(offline,)))
    assert cli_main(["export", "--model", "rmbg-2.0", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "CC-BY-NC-4.0" in out and "NON-COMMERCIAL" in out
    assert source.filename in err and source.sha256 in err and str(cache / source.filename) in err
    assert "non-commercial" in config.description


# ---------------------------------------------------------------- the tiny configuration end to end

@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, birefnet_tiny):
    config, weights = birefnet_tiny
    out = tmp_path_factory.mktemp("birefnet_build")
    photos = [p for p in sample_photos() if p.name in ("astronaut.png", "chelsea.png")]
    data = run_export(ExportOptions(config=config, variants=VARIANTS, weights=weights,
                                    input_size=(TINY_SIZE, TINY_SIZE), out_dir=out, parity_images=photos,
                                    latency_runs=1, log=lambda _: None))
    return out / config.name, data


def test_tiny_pipeline_every_variant_through_the_gate(tiny_export):
    build, data = tiny_export
    assert data["gate"]["passed"], data["gate"]
    assert list(data["variants"]) == VARIANTS
    assert data["variants"]["fp32"]["parity"]["max_abs"] < 1e-4
    for variant in VARIANTS:
        info = data["variants"][variant]
        assert (build / info["path"]).stat().st_size == info["bytes"]
    sizes = {v: data["variants"][v]["bytes"] for v in VARIANTS}
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8w"] < 0.4 * sizes["fp32"]
    assert data["model"]["licence"] == "CC-BY-NC-4.0" and "NON-COMMERCIAL" in data["model"]["licence_note"]
    meta = get_metadata(build / "birefnet-tiny.fp16.onnx")
    assert meta["output"]["select"] == [-1] and meta["output"]["sigmoid_in_model"] is False
    assert meta["preprocessing"]["input_size"] == [TINY_SIZE, TINY_SIZE]


def test_tiny_graphs_are_browser_safe(tiny_export):
    build, _ = tiny_export
    for variant in VARIANTS:
        model = onnx.load(str(build / f"birefnet-tiny.{variant}.onnx"))
        ops = [n.op_type for n in model.graph.node]
        assert not [op for op in ops if op.startswith(("Gather", "Scatter"))], variant
        assert max(len(n.input) for n in model.graph.node if n.op_type == "Concat") <= 7, variant
        for node in model.graph.node:
            if node.op_type == "Conv":
                assert {"kernel_shape", "strides", "pads", "dilations", "group"} <= {a.name for a in node.attribute}
    fp32 = onnx.shape_inference.infer_shapes(onnx.load(str(build / "birefnet-tiny.fp32.onnx")))
    for value in list(fp32.graph.value_info) + list(fp32.graph.output):
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name


def test_fp16_keeps_normalisation_softmax_and_sampling_in_fp32(tiny_export):
    build, _ = tiny_export
    model = onnx.shape_inference.infer_shapes(onnx.load(str(build / "birefnet-tiny.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "GridSample")]
    assert kept and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT for n in kept)
    assert any(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in model.graph.node if n.op_type == "MatMul")
    session = cpu_session(build / "birefnet-tiny.fp16.onnx")
    alpha = session.run(None, {"input": np.zeros((1, 3, TINY_SIZE, TINY_SIZE), np.float32)})[0]
    assert np.isfinite(alpha).all() and 0 <= alpha.min() and alpha.max() <= 1


def test_tiny_browser_stages_compose_to_the_whole_graph(tiny_export):
    # BiRefNet's registry entries ship as two graphs run in sequence (backbone, decoder); the pipeline exports
    # them from the same weights, makes every variant of each, and gates the composition against torch.
    from common.sessions import run_stages

    build, data = tiny_export
    assert data["gate"]["passed"], data["gate"]
    x = np.random.default_rng(0).normal(size=(1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    whole = cpu_session(build / data["variants"]["fp32"]["path"]).run(None, {"input": x})[0]
    for variant in VARIANTS:
        info = data["variants"][variant]
        stages = info["stages"]
        assert [s["name"] for s in stages] == ["backbone", "decoder"]
        assert stages[0]["inputs"] == ["input"] and stages[0]["outputs"] == ["x1", "x2", "x3", "x4"]
        assert stages[1]["inputs"] == ["input", "x1", "x2", "x3", "x4"] and stages[1]["outputs"] == ["alpha"]
        assert info["stages_parity"]["passed"]
        paths = [build / s["path"] for s in stages]
        assert all(p.stat().st_size == s["bytes"] for p, s in zip(paths, stages))
        if variant == "fp32":
            assert np.abs(run_stages(paths, x) - whole).max() < 1e-5
            assert info["stages_parity"]["max_abs"] < 1e-4
        meta = get_metadata(paths[1])
        assert meta["stage"] == "decoder" and meta["preprocessing"]["input_size"] == [TINY_SIZE, TINY_SIZE]
    # int8's decoder was calibrated on the fp32 backbone's outputs: it has activation quantization
    decoder_int8 = onnx.load(str(build / data["variants"]["int8"]["stages"][1]["path"]))
    assert any(n.op_type == "QuantizeLinear" for n in decoder_int8.graph.node)


def test_single_graph_export_has_no_stages(tmp_path, birefnet_tiny):
    config, weights = birefnet_tiny
    photos = [p for p in sample_photos() if p.name == "astronaut.png"]
    data = run_export(ExportOptions(config=config, variants=["fp32"], weights=weights, browser_stages=False,
                                    input_size=(TINY_SIZE, TINY_SIZE), out_dir=tmp_path, parity_images=photos,
                                    latency_runs=1, log=lambda _: None))
    assert "stages" not in data["variants"]["fp32"] and "export_stages" not in data["stages"]
