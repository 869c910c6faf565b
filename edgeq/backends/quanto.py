"""Optimum-Quanto: QLinear with int8/int4/int2/float8 weights, and int8/float8 activations.

Schemes:
* weight-only: activations stay float. On the CPU quanto then multiplies by dequantizing the whole
  weight on every call (quanto::qbytes_mm's default path), so it saves disk and RAM, not time.
* static: activation scales calibrated while transcribing real audio (`Calibration`), then fixed.
  Layers matching `options.dynamic` get the per-call scale below instead: on whisper-base the
  inputs of fc2 (after GELU) carry outliers no fixed scale holds, as with torch.ao and ONNX.
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

import logging
from collections import defaultdict
from fnmatch import fnmatchcase
from pathlib import Path
from types import MethodType

import torch
from optimum.quanto import Calibration, QModuleMixin, freeze, qfloat8_e4m3fn, qint2, qint4, qint8
from optimum.quanto import quantize as quanto_quantize
from optimum.quanto.tensor import QBytesTensor

from edgeq.errors import DeviceError, RecipeError

log = logging.getLogger(__name__)

QTYPES = {"int8": qint8, "int4": qint4, "int2": qint2, "float8": qfloat8_e4m3fn}
ACTIVATIONS = {"float": None, "int8": qint8, "float8": qfloat8_e4m3fn}


def _dynamic_input_scale(module: QModuleMixin, args: tuple):
    """Per-call symmetric scale: absmax / qmax of the input about to be quantized."""
    x = args[0]
    if type(x) is torch.Tensor:
        qmax = 127.0 if module.activation_qtype == qint8 else float(torch.finfo(torch.float8_e4m3fn).max)
        module.input_scale.copy_((x.detach().abs().amax() / qmax).clamp(min=1e-8))
    return None


def _int8_linear_fp32_gemm(self, input: torch.Tensor) -> torch.Tensor:
    """QLinear.forward for int8 activations x int8 weights on the CPU, quanto's numerics kept.

    quanto sends these to torch._int_mm, which on CPUs without VNNI runs a reference kernel:
    1500x512 @ 512x2048 (one whisper-base encoder fc1) took 1.65 s against 0.06 s for the same
    product in float32 (torch 2.13, AVX2 EPYC), so one 30 s window took ~30 s in the encoder.
    The int8 codes are multiplied here with a float32 GEMM instead: every product and partial sum
    of int8 codes is an integer below 2**24 for K <= 1024 (exact) and within float32 rounding above, so
    the result matches quanto's int32 accumulation to float32 rounding. Scales are applied after
    the GEMM exactly as quanto's qbytes_int_mm does.
    """
    x, w = input, self.qweight
    if not (isinstance(x, QBytesTensor) and isinstance(w, QBytesTensor)):
        return torch.nn.functional.linear(input, w, bias=self.bias)
    out = torch.matmul(x._data.to(torch.float32), w._data.to(torch.float32).t())
    out = out * (x._scale * w._scale.t()).to(torch.float32)
    if self.bias is not None:
        out = out + self.bias
    return out


def _use_fp32_gemm_on_cpu(module: QModuleMixin, device) -> None:
    if (torch.device(device).type == "cpu" and module.weight_qtype == qint8
            and module.activation_qtype == qint8):
        module.forward = MethodType(_int8_linear_fp32_gemm, module)


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
            if recipe.scheme == "dynamic" or (
                recipe.scheme == "static" and any(fnmatchcase(name, p) for p in recipe.typed_options.dynamic)
            ):
                _make_dynamic(m)
            _use_fp32_gemm_on_cpu(m, next(m.parameters()).device)
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
    _check_cuda_kernels(meta, device)
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
        _use_fp32_gemm_on_cpu(m, device)
        m.to_empty(device=device)
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = m.load_state_dict(state, strict=False)
        if unexpected:
            raise RecipeError(f"{name}: unexpected quanto state {unexpected[:3]}")


def _check_cuda_kernels(meta, device) -> None:
    """On CUDA, quanto unpacks 4- and 2-bit weights with its own CUDA kernels (the CUDA
    implementation of quanto::unpack, in optimum/quanto/library/extensions/cuda), which it compiles
    with torch.utils.cpp_extension the first time they run on a machine: minutes of nvcc (AWQ and
    Marlin kernels), silent, and impossible without the CUDA toolkit. The first CUDA run of
    quanto-int4 (whisper-base, H200, 2026-12-04) outlasted its 50 s with no output. Say so before
    the wait, and refuse in one line where it cannot work."""
    if torch.device(device).type != "cuda":
        return
    packed = sorted({layer["weights"] for layer in meta["layers"].values()} & {qint4.name, qint2.name})
    if not packed:
        return
    from optimum.quanto.library import extensions
    from torch.utils import cpp_extension

    if not extensions.is_extension_available("quanto_cuda"):
        return  # this quanto unpacks in PyTorch: nothing to compile
    stamp = Path(extensions.get_extension("quanto_cuda").build_directory) / "pytorch_version.txt"
    if stamp.is_file() and stamp.read_text().strip() == torch.__version__:
        return  # compiled already, for this torch
    if cpp_extension.CUDA_HOME is None:
        raise DeviceError(f"{'/'.join(packed)} weights on CUDA need optimum-quanto's CUDA kernels, compiled on "
                          "first use with the CUDA toolkit (nvcc), which is not installed here (CUDA_HOME unset); "
                          "install it, or use --device cpu, or a bnb/hqq recipe")
    log.warning("optimum-quanto compiles its CUDA kernels for %s weights now, the first time on this machine "
                "(several minutes of nvcc; later loads reuse them)", "/".join(packed))
