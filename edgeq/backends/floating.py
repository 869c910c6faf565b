"""The unquantized reference: fp32 / fp16 / bf16 weights, packaged like every quantized bundle."""

from __future__ import annotations

from edgeq.backends.base import DTYPES, state_tensors


def quantize(model, recipe, plan, calibration) -> None:
    model.to(DTYPES[recipe.weights.format])


def export(model, recipe):
    return state_tensors(model, {}), {}


def restore(model, tensors, meta, recipe, device) -> None:
    pass
