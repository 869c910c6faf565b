"""HQQ: calibration-free group-wise weight quantization (8, 4, 3, 2, 1 bit).

HQQ's own save path pickles (`torch.save`) and its safetensors helper rebuilds dtypes with
`eval()` (hqq/core/utils.py, decode_safetensor_type). Here every HQQLinear is stored as three
tensors (packed W_q, scale, zero) plus a JSON record of its scalar metadata, and rebuilt with
`HQQLinear(None, ..., initialize=False)`; dtypes come from an allow-list.
"""

from __future__ import annotations

import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
from torch import nn

from edgeq.backends.base import DTYPES
from edgeq.builder.plan import set_module
from edgeq.errors import RecipeError

_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int32, torch.int8)}
_META_SCALARS = ("nbits", "group_size", "axis", "packing", "view_as_float")
_QUANT_PARAMS = ("nbits", "channel_wise", "group_size", "optimize", "round_zero", "axis", "view_as_float")


def quantize(model, recipe, plan, calibration) -> None:
    axis = recipe.typed_options.axis
    compute = DTYPES[recipe.dtype]
    for name, spec in plan.items():
        if spec.granularity == "per-tensor":
            raise RecipeError(f"recipe {recipe.name}: HQQ quantizes per group or per channel, not per tensor")
        group = spec.group_size if spec.granularity == "group" else None
        config = BaseQuantizeConfig(nbits=spec.bits, group_size=group, axis=axis)
        linear = model.get_submodule(name)
        set_module(model, name, HQQLinear(linear, config, del_orig=True, compute_dtype=compute, device="cpu"))


def export(model, recipe):
    tensors, layers = {}, {}
    for name, m in model.named_modules():
        if not isinstance(m, HQQLinear):
            continue
        meta = m.meta
        # Quantized scales/zeros and offloaded meta are HQQ options edgeq never turns on.
        if meta.get("quant_scale") or meta.get("quant_zero") or m.offload_meta:
            raise RecipeError(f"{name}: HQQ meta quantization is not supported in bundles")
        tensors[f"{name}.W_q"] = m.W_q.data.contiguous()
        tensors[f"{name}.scale"] = meta["scale"].contiguous()
        tensors[f"{name}.zero"] = meta["zero"].contiguous()
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.data.contiguous()
        params = m.quant_config["weight_quant_params"]
        layers[name] = {
            **{k: meta[k] for k in _META_SCALARS},
            "shape": list(meta["shape"]),
            "unpack_view_dtype": str(meta["unpack_view_dtype"]),
            "compute_dtype": str(m.compute_dtype),
            "quant_params": {k: params[k] for k in _QUANT_PARAMS},
            "bias": m.bias is not None,
        }
    return tensors, {"layers": layers}


def restore(model, tensors, meta, recipe, device) -> None:
    for name, layer in meta["layers"].items():
        compute = _DTYPES[layer["compute_dtype"]]
        config = {"weight_quant_params": dict(layer["quant_params"]), "scale_quant_params": None,
                  "zero_quant_params": None, "offload_meta": False}
        q = HQQLinear(None, config, compute_dtype=compute, device=str(device), initialize=False)
        keys = {k: f"{name}.{k}" for k in ("W_q", "scale", "zero", "bias")}
        q.W_q = nn.Parameter(tensors[keys["W_q"]], requires_grad=False)
        q.meta = {
            **{k: layer[k] for k in _META_SCALARS},
            "shape": torch.Size(layer["shape"]),
            "unpack_view_dtype": _DTYPES[layer["unpack_view_dtype"]],
            "compute_dtype": compute,
            "scale": tensors[keys["scale"]],
            "zero": tensors[keys["zero"]],
            "quant_scale": False,  # export() refused quantized scales/zeros
            "quant_zero": False,
        }
        q.bias = tensors[keys["bias"]] if layer["bias"] else None
        q.in_features, q.out_features = layer["shape"][1], layer["shape"][0]
        q.ready = True
        set_module(model, name, q)
