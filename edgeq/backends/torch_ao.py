"""PyTorch's own int8 quantization (torch.ao): dynamic and calibrated static Linear layers.

Dynamic: `nnqd.Linear` — int8 weights, activations quantized per call from their running range.
Static: each Linear becomes Quantize -> `nnq.Linear` -> DeQuantize, with the input and output
scales observed while transcribing real audio (HistogramObserver), then frozen. One fixed scale
per tensor fails on Whisper's `fc2` inputs: on whisper-base they reach ~180 at the language-token
position of the prompt (encoder layer 5: 213) while every other position stays below ~5, so
either the outlier is clipped or ordinary values round to 0-1 steps (all-static: WER 125% with
x86, 50% with qnnpack on 8 LibriSpeech files). The shipped static recipe therefore keeps the
`fc2` layers dynamic (`options.dynamic`), and the decoder's too: the decoder multiplies one token's
activations at a time, so a fixed scale saves it nothing, and one scale for every position of the
prompt and the transcript cost words (whisper-base, speech-dev's 8 LibriSpeech clips, AVX-512 VNNI:
fp32 2.26 %, encoder and decoder static 4.52 %, the encoder static alone 2.26 %; on AVX2 the recipe
with its decoder static read 3.39 %, 6.78 % from 4 calibration clips: the decoder's scales were on a
knife's edge that the encoder's are not).

Quantized Linear layers hold *packed* weights whose layout belongs to one quantized engine
(FBGEMM/x86 or QNNPACK). A bundle therefore stores the plain int8 weights with their per-channel
scales and repacks them at load, for the engine of the device it runs on: a bundle built on x86
runs on a Pi. Activations use 7-bit ranges (reduce_range) so the same scales are safe on x86,
whose AVX2 u8*s8 multiply-add saturates with full 8-bit ranges, and on ARM.
"""

from __future__ import annotations

import platform
from fnmatch import fnmatchcase

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import torch.ao.quantization as tq
from torch import nn

from edgeq.backends.base import quantized_tensors_allowed
from edgeq.builder.plan import set_module
from edgeq.errors import RecipeError


class StaticQLinear(nn.Module):
    """Quant -> Linear -> DeQuant around one Linear: eager-mode static quantization's unit."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.quant = tq.QuantStub()
        self.linear = linear
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.linear(self.quant(x)))


def select_engine(engine: str) -> str:
    """The quantized engine for this host: QNNPACK on ARM, x86 (FBGEMM + oneDNN) elsewhere."""
    if engine == "auto":
        engine = "qnnpack" if platform.machine().lower() in ("arm64", "aarch64") else "x86"
    if engine not in torch.backends.quantized.supported_engines:
        raise RecipeError(
            f"quantized engine {engine!r} is not in this PyTorch build ({', '.join(torch.backends.quantized.supported_engines)})"
        )
    # A process-wide setting in torch.ao: the packed weights are laid out for it.
    torch.backends.quantized.engine = engine
    return engine


def _weight_observer(spec):
    if spec.granularity == "per-tensor":
        return tq.default_weight_observer
    if spec.granularity == "per-channel":
        return tq.default_per_channel_weight_observer
    raise RecipeError("torch.ao int8 quantizes per tensor or per channel, not in groups")


def quantize(model, recipe, plan, calibration) -> None:
    options = recipe.typed_options
    select_engine(options.engine)
    if recipe.scheme == "static":
        dynamic = {n: s for n, s in plan.items() if any(fnmatchcase(n, p) for p in options.dynamic)}
        _quantize_static(model, {n: s for n, s in plan.items() if n not in dynamic}, calibration)
        _quantize_dynamic(model, dynamic)
    else:
        _quantize_dynamic(model, plan)


def _quantize_dynamic(model, plan) -> None:
    if plan:
        qconfigs = {}
        for name, spec in plan.items():
            _weight_observer(spec)  # rejects group granularity
            qconfigs[name] = (tq.per_channel_dynamic_qconfig if spec.granularity == "per-channel"
                              else tq.default_dynamic_qconfig)
        tq.quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=True)


def _quantize_static(model, plan, calibration) -> None:
    """Observers first, calibrate on real transcription, then convert."""
    act = tq.HistogramObserver.with_args(dtype=torch.quint8, reduce_range=True)
    for name, spec in plan.items():
        wrapper = StaticQLinear(model.get_submodule(name))
        wrapper.qconfig = tq.QConfig(activation=act, weight=_weight_observer(spec))
        set_module(model, name, wrapper)
    tq.prepare(model, inplace=True)
    calibration.run(model)
    tq.convert(model, inplace=True)


# --------------------------------------------------------------------------- save / restore


def _plain(name: str, qweight: torch.Tensor, tensors: dict) -> dict:
    tensors[f"{name}.qweight"] = qweight.int_repr().contiguous()
    if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        tensors[f"{name}.w_scale"] = qweight.q_per_channel_scales().contiguous()
        tensors[f"{name}.w_zero_point"] = qweight.q_per_channel_zero_points().contiguous()
        return {"qscheme": "per-channel", "axis": int(qweight.q_per_channel_axis())}
    tensors[f"{name}.w_scale"] = torch.tensor([qweight.q_scale()], dtype=torch.float64)
    tensors[f"{name}.w_zero_point"] = torch.tensor([qweight.q_zero_point()], dtype=torch.int64)
    return {"qscheme": "per-tensor"}


def _qweight(name: str, layer: dict, tensors: dict) -> torch.Tensor:
    w = tensors[f"{name}.qweight"]
    scale, zp = tensors[f"{name}.w_scale"].double(), tensors[f"{name}.w_zero_point"].long()
    with quantized_tensors_allowed():
        if layer["qscheme"] == "per-channel":
            return torch._make_per_channel_quantized_tensor(w, scale, zp, layer["axis"])
        return torch._make_per_tensor_quantized_tensor(w, float(scale[0]), int(zp[0]))


def export(model, recipe):
    tensors, layers = {}, {}
    for name, m in model.named_modules():
        if type(m) is nnqd.Linear:
            qw, bias = m._weight_bias()
            layers[name] = {"type": "dynamic", **_plain(name, qw, tensors),
                            "in": m.in_features, "out": m.out_features, "bias": bias is not None}
        elif type(m) is StaticQLinear and isinstance(m.linear, nnq.Linear):
            qw, bias = m.linear._weight_bias()
            layers[name] = {"type": "static", **_plain(name, qw, tensors),
                            "in": m.linear.in_features, "out": m.linear.out_features, "bias": bias is not None,
                            "in_scale": float(m.quant.scale), "in_zero_point": int(m.quant.zero_point),
                            "out_scale": float(m.linear.scale), "out_zero_point": int(m.linear.zero_point)}
        else:
            continue
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().float().contiguous()
    return tensors, {"layers": layers}


def restore(model, tensors, meta, recipe, device) -> None:
    if str(device) != "cpu":
        raise RecipeError("torch.ao quantized Linear layers run on the CPU only; use --device cpu")
    select_engine(recipe.typed_options.engine)
    for name, layer in meta["layers"].items():
        qw = _qweight(name, layer, tensors)
        bias = tensors[f"{name}.bias"] if layer["bias"] else None
        if layer["type"] == "dynamic":
            q = nnqd.Linear(layer["in"], layer["out"], bias_=layer["bias"], dtype=torch.qint8)
            q.set_weight_bias(qw, bias)
        else:
            lin = nnq.Linear(layer["in"], layer["out"], bias_=layer["bias"])
            lin.set_weight_bias(qw, bias)
            lin.scale, lin.zero_point = layer["out_scale"], layer["out_zero_point"]
            q = StaticQLinear(nn.Identity())
            q.quant = nnq.Quantize(layer["in_scale"], layer["in_zero_point"], torch.quint8)
            q.linear = lin
            q.dequant = nnq.DeQuantize()
        set_module(model, name, q)
