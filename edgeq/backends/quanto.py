"""Optimum-Quanto: QLinear with int8/int4/int2/float8 weights, and int8/float8 activations.

Schemes:
* weight-only: activations stay float. On the CPU quanto then multiplies by dequantizing the whole
  weight on every call (quanto::qbytes_mm's default path), so it saves disk and RAM, not time.
* static: activation scales calibrated while transcribing real audio (`Calibration`), then fixed.
* dynamic: quanto has no dynamic mode — an uncalibrated `activations=qint8` model quantizes with
  input_scale = 1 and decodes garbage (looping special tokens on whisper-base). edgeq adds one:
  a forward pre-hook, run before quanto's own input quantization, sets each QLinear's input
  scale from the absmax of the tensor it is about to quantize. With int8 activations and int8
  weights quanto's CPU kernel is a real int8 GEMM (torch._int_mm), and the output stays float.

State is quanto's own flattened state dict (weight._data, weight._scale, ...) plus a JSON record
per module of what `quantization_map()` omits: the group size of int2/int4 weights (without it
a 64-group checkpoint reloads as 128 groups and fails), whether output quantization is on, and
whether the activation scale is dynamic.

Inference must run under torch.no_grad, not inference_mode: quanto's packed int2/int4 weights
re-wrap tensors in their forward, which inference tensors forbid ("Cannot set version_counter
for inference tensor").
"""

from __future__ import annotations

from collections import defaultdict

import torch
from optimum.quanto import Calibration, QModuleMixin, freeze, quantize as quanto_quantize
from optimum.quanto import qfloat8_e4m3fn, qint2, qint4, qint8

from edgeq.errors import RecipeError

QTYPES = {"int8": qint8, "int4": qint4, "int2": qint2, "float8": qfloat8_e4m3fn}
ACTIVATIONS = {"float": None, "int8": qint8, "float8": qfloat8_e4m3fn}


def _dynamic_input_scale(module: QModuleMixin, args: tuple):
    """Per-call symmetric scale: absmax / qmax of the input about to be quantized."""
    x = args[0]
    if type(x) is torch.Tensor:
        qmax = 127.0 if module.activation_qtype == qint8 else float(torch.finfo(torch.float8_e4m3fn).max)
        module.input_scale.copy_((x.detach().abs().amax() / qmax).clamp(min=1e-8))
    return None


def _make_dynamic(module: QModuleMixin) -> None:
    module.disable_output_quantization()
    # prepend: must run before quanto's quantize_input pre-hook, which reads input_scale.
    module.register_forward_pre_hook(_dynamic_input_scale, prepend=True)
    module._edgeq_dynamic = True


def quantize(model, recipe, plan, calibration) -> None:
    activations = ACTIVATIONS[recipe.activations.format]
    groups = defaultdict(list)
    for name, spec in plan.items():
        if spec.granularity == "per-tensor":
            raise RecipeError(f"recipe {recipe.name}: quanto quantizes weights per channel or in groups")
        if spec.format not in QTYPES:
            raise RecipeError(f"recipe {recipe.name}: quanto has no {spec.format} weights")
        groups[(spec.format, spec.group_size)].append(name)
    for (fmt, group_size), names in groups.items():
        quanto_quantize(model, weights=QTYPES[fmt], activations=activations, include=names)
        for name in names:
            m = model.get_submodule(name)
            if group_size is not None:
                if m.weight_qtype.bits == 8:
                    raise RecipeError(f"recipe {recipe.name}: quanto groups only int2/int4 weights")
                m.weight_group_size = group_size
            if recipe.scheme == "dynamic":
                _make_dynamic(m)
    if recipe.scheme == "static":
        with torch.no_grad(), Calibration(momentum=0.9):
            calibration.run(model)
    freeze(model)


def export(model, recipe):
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, QModuleMixin):
            hook = m._quantize_hooks.get("output")
            layers[name] = {
                "weights": m.weight_qtype.name if m.weight_qtype else "none",
                "activations": m.activation_qtype.name if m.activation_qtype else "none",
                "group_size": m.weight_group_size,
                "output_quant": bool(hook is not None and hook.id in m._forward_hooks),
                "dynamic": bool(getattr(m, "_edgeq_dynamic", False)),
            }
    # quanto's _save_to_state_dict flattens each QTensor into plain tensors: take them as they are.
    prefixes = tuple(f"{n}." for n in layers)
    tensors = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    return tensors, {"layers": layers}


def restore(model, tensors, meta, recipe, device) -> None:
    for name, layer in meta["layers"].items():
        weights = None if layer["weights"] == "none" else layer["weights"]
        activations = None if layer["activations"] == "none" else layer["activations"]
        quanto_quantize(model, weights=weights, activations=activations, include=[name])
        m = model.get_submodule(name)
        if not isinstance(m, QModuleMixin):
            raise RecipeError(f"{name}: quanto could not rebuild this module")
        m.weight_group_size = layer["group_size"]
        if layer["dynamic"]:
            _make_dynamic(m)
        elif not layer["output_quant"]:
            m.disable_output_quantization()
        m.to_empty(device=device)
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = m.load_state_dict(state, strict=False)
        if unexpected:
            raise RecipeError(f"{name}: unexpected quanto state {unexpected[:3]}")
