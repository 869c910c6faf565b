"""bitsandbytes: LLM.int8() (int8 weights, per-call int8 activations, fp outliers) and 4-bit NF4/FP4.

Quantization happens when a parameter is moved to a device (`Int8Params.to`, `Params4bit.to`),
also CPU to CPU. State is saved from `quant_state.as_dict(packed=False)` (plain tensors + JSON
scalars) and rebuilt with `Params4bit.from_prequantized` / `Int8Params(CB=, SCB=)`, so nothing is
pickled. Saving happens before any forward: bitsandbytes 0.50 repacks 4-bit weights for its
AVX512-BF16 CPU kernels on first use (`packing_format_for_cpu`), a layout that is host-specific.
"""

from __future__ import annotations

import torch
from bitsandbytes.nn import Int8Params, Linear4bit, Linear8bitLt, Params4bit
from torch import nn

from edgeq.backends.base import DTYPES
from edgeq.builder.plan import set_module
from edgeq.errors import BundleError, RecipeError

# bitsandbytes keeps its packed 4-bit weights as uint8 next to the float dtypes.
_DT = {**DTYPES, "uint8": torch.uint8}


def quantize(model, recipe, plan, calibration) -> None:
    threshold = recipe.typed_options.threshold
    compute = DTYPES[recipe.dtype]
    for name, spec in plan.items():
        lin = model.get_submodule(name)
        w = lin.weight.detach().clone()
        if spec.format == "int8":
            q = Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                             has_fp16_weights=False, threshold=threshold, device="meta")
            q.weight = Int8Params(w, requires_grad=False, has_fp16_weights=False)
        elif spec.format in ("nf4", "fp4"):
            if spec.granularity != "group":
                raise RecipeError(f"recipe {recipe.name}: bitsandbytes 4-bit quantizes in blocks (granularity 'group')")
            q = Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute,
                           compress_statistics=spec.double_quant, quant_type=spec.format, device="meta")
            q.weight = Params4bit(w, requires_grad=False, blocksize=spec.group_size,
                                  compress_statistics=spec.double_quant, quant_type=spec.format, module=q)
        else:
            raise RecipeError(f"recipe {recipe.name}: bitsandbytes has no {spec.format} weights")
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        set_module(model, name, q.to("cpu"))  # the move is what quantizes


def export(model, recipe):
    tensors, layers = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, Linear8bitLt):
            scb = m.weight.SCB if getattr(m.weight, "SCB", None) is not None else m.state.SCB
            tensors[f"{name}.weight"] = m.weight.data.contiguous()
            tensors[f"{name}.SCB"] = scb.contiguous()
            layers[name] = {"type": "int8", "in": m.in_features, "out": m.out_features,
                            "bias": m.bias is not None, "threshold": m.state.threshold}
        elif isinstance(m, Linear4bit):
            state = m.weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):
                raise BundleError(f"{name}: 4-bit weights were repacked for this CPU's kernels; save before any forward")
            d = state.as_dict(packed=False)
            for k, v in d.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{name}.weight.{k}"] = v.contiguous()
            tensors[f"{name}.weight"] = m.weight.data.contiguous()
            layers[name] = {"type": "4bit", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None,
                            "compute_dtype": str(m.compute_dtype).removeprefix("torch."),
                            "quant_storage": str(m.weight.data.dtype).removeprefix("torch."),
                            "double_quant": state.nested,
                            "quant_state": {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)}}
        else:
            continue
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().contiguous()
    return tensors, {"layers": layers}


def restore(model, tensors, meta, recipe, device) -> None:
    for name, layer in meta["layers"].items():
        if layer["type"] == "int8":
            q = Linear8bitLt(layer["in"], layer["out"], bias=layer["bias"], has_fp16_weights=False,
                             threshold=layer["threshold"], device="meta")
            w = tensors[f"{name}.weight"]
            # load_state_dict would need weight.SCB to exist already: build the parameter directly.
            q.weight = Int8Params(w, requires_grad=False, has_fp16_weights=False, CB=w, SCB=tensors[f"{name}.SCB"])
        else:
            state = dict(layer["quant_state"])
            prefix = f"{name}.weight."
            for k in [k for k in tensors if k.startswith(prefix)]:
                state[k[len(prefix):]] = tensors[k]
            q = Linear4bit(layer["in"], layer["out"], bias=layer["bias"], compute_dtype=_DT[layer["compute_dtype"]],
                           compress_statistics=layer["double_quant"], quant_type=state["quant_type"],
                           quant_storage=_DT[layer["quant_storage"]], device="meta")
            q.weight = Params4bit.from_prequantized(tensors[f"{name}.weight"], state, requires_grad=False,
                                                    device=str(device), module=q)
        if layer["bias"]:
            q.bias = nn.Parameter(tensors[f"{name}.bias"], requires_grad=False)
        set_module(model, name, q)
